"""Test scaffolding: with FPLOOPD_TEST_FAKE_PIPELINE=1 every process (the spawned workers too)
uses a fast stand-in for the models and run_job, to test the daemon's mechanics alone."""

import os

if os.environ.get("FPLOOPD_TEST_FAKE_PIPELINE") == "1":
    import fake_pipeline

    fake_pipeline.install()
