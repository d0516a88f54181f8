"""Cloud Storage notifications for the local emulators, which send none: the message Cloud
Storage publishes for an object (``OBJECT_FINALIZE``, payload format ``JSON_API_V1``), built or
published for an object in the GCS emulator.

    python -m localgcp.notify gs://BUCKET/OBJECT [--topic scans] [--metadata case_id=c1 ...]

publishes the object's notification (with its real generation) on ``--topic`` of the Pub/Sub
emulator (``PUBSUB_EMULATOR_HOST``), creating the topic and its subscription ``TOPIC-sub`` if
they are missing; it prints the subscription, the one ``python -m pipelines.slide_stream
--subscription`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from localgcp.cluster import PROJECT


def gcs_message(
    bucket: str,
    name: str,
    generation: int | str = 1,
    event: str = "OBJECT_FINALIZE",
    **resource: Any,
) -> tuple[bytes, dict[str, str]]:
    """(data, attributes) of the notification Cloud Storage publishes for ``gs://bucket/name``;
    ``resource``: more of the object's fields (``metadata``, ``contentType``, ``size``...)."""
    body = {"kind": "storage#object", "bucket": bucket, "name": name,
            "generation": str(generation), **resource}  # fmt: skip
    attributes = {
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "eventType": event,
        "payloadFormat": "JSON_API_V1",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventTime": "2026-12-03T08:00:00.000000Z",
    }
    return json.dumps(body).encode(), attributes


def publish(topic: str, data: bytes, attributes: dict[str, str], project: str = PROJECT) -> str:
    """Publish on ``topic`` (created, with a pull subscription ``TOPIC-sub``, if missing);
    return the subscription's path."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # untyped package

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    subscription = subscriber.subscription_path(project, f"{topic}-sub")
    try:
        publisher.create_topic(name=topic_path)
        subscriber.create_subscription(name=subscription, topic=topic_path)
    except AlreadyExists:
        pass
    publisher.publish(topic_path, data, **attributes).result(timeout=30)
    return subscription


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localgcp.notify", description=__doc__)
    parser.add_argument("object", help="gs://BUCKET/OBJECT, in the GCS emulator")
    parser.add_argument("--topic", default="scans")
    parser.add_argument("--metadata", nargs="*", default=[], help="KEY=VALUE object metadata")
    args = parser.parse_args(argv)
    if "PUBSUB_EMULATOR_HOST" not in os.environ:
        parser.error("PUBSUB_EMULATOR_HOST is not set: start the emulators (python -m localgcp)")
    from google.cloud import storage

    bucket, _, name = args.object.removeprefix("gs://").partition("/")
    blob = storage.Client(project=PROJECT).bucket(bucket).get_blob(name)
    if blob is None:
        parser.error(f"{args.object} is not in the GCS emulator")
    metadata = dict(item.split("=", 1) for item in args.metadata)
    extra: dict[str, Any] = {"metadata": metadata} if metadata else {}
    data, attributes = gcs_message(bucket, name, blob.generation, size=str(blob.size), **extra)
    print(publish(args.topic, data, attributes))


if __name__ == "__main__":
    main()
