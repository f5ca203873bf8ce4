"""The products: loop, connect, video2loop and plain image-to-video, over the engine.

``run_job`` is the single entry point the daemon and the one-shot commands use. Importing this
package loads no model code: the runners come in when a job runs.

Modules, each with one job: ``job`` (run_job), ``runners`` (pipeline -> runner), ``context`` (a
running job), ``loop``/``i2v``/``connect``/``video2loop`` (each pipeline and its runner),
``common`` (what they share), ``writers`` (output files), ``progress``, ``results``, ``seeds``
(seed policy), ``decode`` (latent files decoded later), ``latentfile``, ``manifest``.
"""

from __future__ import annotations

from fploopd.pipelines.job import run_job
from fploopd.pipelines.progress import Progress
from fploopd.pipelines.results import JobResult, OutputFile
from fploopd.pipelines.seeds import pick_seeds

__all__ = ["JobResult", "OutputFile", "Progress", "pick_seeds", "run_job"]
