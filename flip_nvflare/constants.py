"""Names shared by every part of flip-nvflare: statuses, resource types, job types, events, tasks."""

from __future__ import annotations

import re
from enum import Enum


class ModelStatus(str, Enum):
    """Lifecycle statuses of a FLIP model, as flip-api knows them.

    ``TRAINING_STARTED`` is called ``RUNNING`` on H2 hubs and ``RESULTS_UPLOAD_FAILED`` exists only
    on H2; the prod backend translates both (see :class:`HubApi`).
    """

    PENDING = "PENDING"
    INITIATED = "INITIATED"
    PREPARED = "PREPARED"
    TRAINING_STARTED = "TRAINING_STARTED"
    RESULTS_UPLOADED = "RESULTS_UPLOADED"
    RESULTS_UPLOAD_FAILED = "RESULTS_UPLOAD_FAILED"
    ERROR = "ERROR"
    STOPPED = "STOPPED"

    @property
    def is_final(self) -> bool:
        """Whether this status ends a model's run."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {ModelStatus.RESULTS_UPLOADED, ModelStatus.RESULTS_UPLOAD_FAILED, ModelStatus.ERROR, ModelStatus.STOPPED}
)


class ResourceType(str, Enum):
    """Kinds of imaging data the imaging-api can fetch for an accession."""

    DICOM = "DICOM"
    NIFTI = "NIFTI"
    SEG = "SEG"
    ALL = "ALL"
    #: FLIP's name of :attr:`SEG` (the same member).
    SEGMENTATION = "SEG"

    @property
    def assessor_type(self) -> str:
        """The imaging-api ``assessor_type`` query value for this resource type."""
        return "assessor" if self is ResourceType.SEG else "scan"


class JobType(str, Enum):
    """The FLIP job types flip-nvflare has templates for."""

    STANDARD = "standard"
    EVALUATION = "evaluation"
    FED_OPT = "fed_opt"


class HubApi(str, Enum):
    """Generations of the Central Hub's flip-api (see the contracts page)."""

    H1 = "h1"
    H2 = "h2"

    def status_name(self, status: ModelStatus) -> str:
        """The status path segment this hub generation expects for ``status``."""
        if self is HubApi.H2:
            if status is ModelStatus.TRAINING_STARTED:
                return "RUNNING"
            return status.value
        if status is ModelStatus.RESULTS_UPLOAD_FAILED:
            return ModelStatus.ERROR.value
        return status.value


class FlipMode(str, Enum):
    """Which backend a job uses: local files (dev) or the real FLIP services (prod)."""

    DEV = "dev"
    PROD = "prod"


class FlipEvents:
    """NVFlare event types fired by flip-nvflare components."""

    #: Fired by InitTraining / InitEvaluation when it asks the clients to prepare.
    TRAINING_INITIATED = "_flip_training_initiated"
    #: Fired by InitTraining / InitEvaluation when every required client has prepared.
    PREPARATION_DONE = "_flip_preparation_done"
    #: Fired by InitTraining / InitEvaluation when a client's preparation failed (run ends).
    PREPARATION_FAILED = "_flip_preparation_failed"
    #: Federated event fired by ``send_metrics_value`` on a client; received on the server.
    FED_SEND_METRIC = "fed.flip.send_metric"
    RESULTS_UPLOADED = "_flip_results_uploaded"
    RESULTS_UPLOAD_FAILED = "_flip_results_upload_failed"


class FlipProps:
    """FLContext properties flip-nvflare components set for each other (private; not sticky unless noted)."""

    #: Set with TRAINING_INITIATED: names of the clients asked to prepare.
    PREPARATION_TARGETS = "flip.preparation.targets"
    #: Set with PREPARATION_FAILED: the client whose preparation failed (``None`` if it was a timeout).
    PREPARATION_FAILED_CLIENT = "flip.preparation.failed_client"
    #: Set with PREPARATION_FAILED: the failure as one sanitized sentence.
    PREPARATION_FAILURE = "flip.preparation.failure"
    #: Set with PREPARATION_DONE: client name -> its preparation summary (counts only).
    PREPARATION_SUMMARY = "flip.preparation.summary"
    #: Set with RESULTS_UPLOADED / RESULTS_UPLOAD_FAILED: where the results went (or were kept).
    RESULTS_LOCATION = "_flip_results_location"
    #: Set with RESULTS_UPLOADED / RESULTS_UPLOAD_FAILED: the id of the FlipBackend that uploaded them.
    RESULTS_FLIP_ID = "_flip_results_flip_id"
    #: Sticky on a client, set by CohortPreparer at START_RUN: the job's preparer, so a runner whose
    #: site has not prepared (the server moved on without it) prepares first.
    COHORT_PREPARER = "flip.cohort.preparer"


class FlipHeaders:
    """Headers of a client's task reply that flip-nvflare components read on the server."""

    #: The sanitized failure text of a client (the name NVFlare and FLIP use).
    EXCEPTION = "exception"
    #: CohortPreparer's summary of a preparation (counts only), read by InitTraining / InitEvaluation.
    PREPARATION_SUMMARY = "flip_preparation"
    #: ImageCleanup's counts, read by CleanupClients.
    CLEANUP_SUMMARY = "flip_cleanup"
    #: EvaluatorRunner (one model per call): model name -> return code of each model whose evaluation
    #: failed in a reply that carries the other models' metrics; read by EvaluateModels.
    MODEL_FAILURES = "flip_model_failures"


class FlipCookies:
    """Cookies flip-nvflare controllers put on a task; NVFlare returns them with each client's result."""

    #: EvaluateModels: the names of the models its evaluation task carries (its results are reported
    #: per model through VALIDATION_RESULT_RECEIVED, so task-result readers skip them).
    EVALUATED_MODELS = "flip_evaluated_models"


#: Request header carrying a hub call's idempotency key: the same key on every attempt of one logical
#: call (a status, a metric, a log entry), so a hub that honours it records the call once however
#: often an answer was lost and the call retried. A UUID4 string.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"

#: Longest x-axis label a metric may carry (flip-api's limit on H2 hubs).
MAX_X_LABEL = 64

_SITE_NAME = re.compile(r"site-(\d+)")
_TRUST_NAME = re.compile(r"Trust_\d+")


def default_trust_name(client_name: str) -> str:
    """The hub's trust name of an NVFlare client by FLIP's rule: ``site-N`` -> ``Trust_N``.

    Names that already look like ``Trust_N``, and any other name, are used unchanged. A job can
    override the rule per client with FlipBackend's ``trust_names``.
    """
    if _TRUST_NAME.fullmatch(client_name):
        return client_name
    match = _SITE_NAME.fullmatch(client_name)
    return f"Trust_{match.group(1)}" if match else client_name


class FlipTasks:
    """NVFlare task names used by FLIP jobs."""

    INIT_TRAINING = "init_training"
    POST_VALIDATION = "post_validation"
    INIT_TASK = "init_task"
    POST_TASK = "post_task"
    TRAIN = "train"
    SUBMIT_MODEL = "submit_model"
    VALIDATE = "validate"
    EVALUATE = "evaluate"


class PTConstants:
    """Names FLIP PyTorch apps use for model files and evaluation output (as FLIP's own PTConstants)."""

    PTServerName = "server"
    PTModelName = "model.pt"
    PTFileModelName = "FL_global_model.pt"
    PTBestFileModelName = "best_FL_global_model.pt"
    #: FLIP's newer name of :attr:`PTBestFileModelName`.
    BestModelFilename = "best_FL_global_model.pt"
    CrossValResultsJsonFilename = "cross_val_results.json"
    EvalFailuresFilename = "evaluation_failures.json"
    PTLocalModelName = "local_model.pt"
    PTModelsDir = "models"
    EvalResultsFilename = "evaluation_results.json"
    EvalDir = "evaluation_results"
    EvalTaskName = "evaluation"


#: Default id of the component that builds a job's FLIP backend.
DEFAULT_FLIP_ID = "flip"


class FlipMetricsLabel(str, Enum):
    """FLIP's standard metric labels (labels are free text; these are the names FLIP's own code uses)."""

    LOSS_FUNCTION = "LOSS_FUNCTION"
    DL_RESULT = "DL_RESULT"
    AVERAGE_SCORE = "AVERAGE_SCORE"


class FlipMetaKey(str, Enum):
    """DXO meta keys FLIP apps read."""

    #: The training stage of a multi-stage (diffusion) model.
    STAGE = "stage"


# FLIP's settings object, answered from the running job's backend (never from the environment).
from flip_nvflare.compat import unsupported_names  # noqa: E402
from flip_nvflare.compat.settings import FlipConstants as FlipConstants  # noqa: E402

__getattr__ = unsupported_names(__name__)
