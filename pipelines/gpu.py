"""``--gpu t4|l4|a100``: a thin, logged expansion into the Dataflow flags a GPU job needs.

Each preset sets only what the command line did not: the accelerator service option (with the
driver install), a machine type that carries that GPU, one SDK process per worker so one model
copy sits on the GPU, a few harness threads to keep it fed while others read tiles, and a disk
for the image. ``--gpu`` also turns on ``--require_gpu``. Every value is printed at launch, and
any of them can be given explicitly instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    WorkerOptions,
)

from pipelines.flags import GPU_PRESETS
from pipelines.options import InferenceOptions
from transforms.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuPreset:
    accelerator: str
    machine_type: str
    harness_threads: int
    disk_size_gb: int = 100


PRESETS = dict(
    zip(
        GPU_PRESETS,
        (
            GpuPreset("nvidia-tesla-t4", "n1-standard-8", 4),
            GpuPreset("nvidia-l4", "g2-standard-8", 4),
            GpuPreset("nvidia-tesla-a100", "a2-highgpu-1g", 8, 200),
        ),
        strict=True,
    )
)


def service_option(preset: GpuPreset) -> str:
    return f"worker_accelerator=type:{preset.accelerator};count:1;install-nvidia-driver"


def apply_gpu_preset(options: PipelineOptions) -> list[str]:
    """Fill the flags of ``--gpu`` that are not set; return what was set, for the log."""
    name = options.view_as(InferenceOptions).gpu
    if name is None:
        return []
    if name not in PRESETS:
        raise ConfigError(f"--gpu must be one of {', '.join(sorted(PRESETS))}, got {name!r}")
    preset = PRESETS[name]
    gcp = options.view_as(GoogleCloudOptions)
    worker = options.view_as(WorkerOptions)
    debug = options.view_as(DebugOptions)
    applied: list[str] = []
    services = list(gcp.dataflow_service_options or [])
    given = [s for s in services if s.startswith("worker_accelerator=")]
    if given and given != [service_option(preset)]:
        raise ConfigError(f"--gpu {name} conflicts with --dataflow_service_options={given[0]}")
    if not given:
        gcp.dataflow_service_options = [*services, service_option(preset)]
        applied.append(f"--dataflow_service_options={service_option(preset)}")
    for view, attr, value in (
        (worker, "machine_type", preset.machine_type),
        (worker, "disk_size_gb", preset.disk_size_gb),
        (debug, "number_of_worker_harness_threads", preset.harness_threads),
    ):
        if getattr(view, attr) is None:
            setattr(view, attr, value)
            applied.append(f"--{attr}={value}")
    if not debug.lookup_experiment("no_use_multiple_sdk_containers"):
        debug.add_experiment("no_use_multiple_sdk_containers")
        applied.append("--experiments=no_use_multiple_sdk_containers")
    common = options.view_as(InferenceOptions)
    if not common.require_gpu:
        common.require_gpu = True
        applied.append("--require_gpu")
    log.info("--gpu %s expands to: %s", name, " ".join(applied))
    return applied
