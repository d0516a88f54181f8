"""Pipeline entry points: options, ``build(pipeline, config)`` and ``run(argv)``."""
