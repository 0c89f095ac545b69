"""Registration of a frame to the CT: the `Registrar` and its parts, in the order a frame meets
them: `frame_input` -> init (`registrar`) -> learned stage (`runtime.networks.learned`) ->
`intensity` stage (`pyramid`, `working` resolution, `outliers`, `similarity`, `search`,
`solver`, `centred` pose parametrisation) -> `confidence` -> `result`; `timing` keeps the
deadline and the timings, `metrics` evaluates poses against a known truth."""

from runtime.registration.confidence import ConfidenceModel
from runtime.registration.options import RegistrarOptions
from runtime.registration.registrar import Registrar
from runtime.registration.result import STATUSES, Confidence, RegistrationResult, Status
from runtime.registration.result import MultiViewConfidence, MultiViewResult, ViewResult
from runtime.registration.similarity import SIMILARITIES, SimilarityKind
from runtime.registration.tracking import Tracker, TrackingOptions

__all__ = ["Registrar", "RegistrarOptions", "ConfidenceModel", "RegistrationResult", "Confidence", "Status",
           "STATUSES", "SimilarityKind", "SIMILARITIES",
           "MultiViewResult", "MultiViewConfidence", "ViewResult", "Tracker", "TrackingOptions"]
