"""batchgate: scalable batch processing behind one blocking HTTP call."""

from batchgate.app import App, FunctionInfo, Registry, load_app
from batchgate.errors import BatchgateError, ConfigError, JobCancelled, JobFailed, NotFound
from batchgate.models import Job, JobStatus, Progress
from batchgate.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "App",
    "BatchgateError",
    "ConfigError",
    "FunctionInfo",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobStatus",
    "NotFound",
    "Progress",
    "Registry",
    "Settings",
    "__version__",
    "load_app",
]
