"""The HTTP contract: the response models FastAPI validates every answer against, and the statuses.

Each model says how one JSON answer looks (``/docs`` shows them); ``from_*`` constructors build them from
the library's objects. Fields listed in ``_omitted_when_null`` are left out of the JSON when unset (a
single-label model's ``labels``, a successful request's ``detail``), as they always have been.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, Field, model_serializer

if TYPE_CHECKING:
    from ..models.spec import ModelSpec
    from ..prediction import Prediction

#: How each failure is answered (documented in the OpenAPI description too).
STATUS_CODES: dict[int, str] = {
    200: "at least one image was classified (the others carry `error` and their own `status`)",
    400: "malformed multipart body or Content-Length",
    401: "API key required and missing or wrong (`X-API-Key` or `Authorization: Bearer`)",
    413: "request body over the size limit, or more files than allowed in one request",
    415: "not an image / unsupported format, or a Content-Type that is neither multipart/form-data, "
         "image/* nor application/octet-stream",
    422: "empty request or empty file, corrupt or truncated image, image over the pixel limit "
         "(decompression-bomb guard), bad `top_k`, or a file under an unknown form field. When images were "
         "read (415 too), the body is the usual response with each image's `error` and `status`",
    503: "overloaded (too many images in progress) or shutting down; retry after `Retry-After` seconds. "
         "Requests that arrive while the model warms up wait instead",
}


def status_for_reason(reason: str) -> int:
    """The HTTP status for one image's :class:`~imclass.errors.ImageLoadError` reason (see ``STATUS_CODES``)."""
    r = reason.lower()
    if r.startswith("not an image") or r.startswith("unsupported"):
        return 415
    return 422  # empty file, corrupt/truncated, too large (bomb guard), invalid dimensions, ...


class _Model(BaseModel):
    _omitted_when_null: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_nulls(self, handler):
        data = handler(self)
        for name in self._omitted_when_null:
            if data.get(name, ...) is None:
                del data[name]
        return data


# ---- POST /v1/predict ---------------------------------------------------------------------------------------

class TopK(_Model):
    label: str
    score: float


class ImageResult(_Model):
    _omitted_when_null = ("labels", "known_score")

    filename: Optional[str] = Field(None, description="the uploaded file's name (null for a raw body)")
    label: Optional[str] = Field(None, description="top class, `unknown`, or `;`-joined labels (multi-label)")
    score: Optional[float] = None
    error: Optional[str] = Field(None, description="why this image could not be classified")
    topk: list[TopK] = []
    labels: Optional[list[str]] = Field(
        None, description="multi-label models only: every label above its threshold")
    known_score: Optional[float] = Field(
        None, description="models that can say `unknown`: how familiar the image looks (higher = more likely "
                          "one of the model's classes); below the model's threshold the label is `unknown`")
    status: int = Field(200, description="HTTP status this image alone would get")

    @classmethod
    def from_prediction(cls, filename: str | None, p: Prediction) -> ImageResult:
        d = p.to_dict()
        del d["path"]
        if p.error is not None:
            d["topk"] = []
        return cls(filename=filename, **d, status=200 if p.error is None else status_for_reason(p.error))


class PredictResponse(_Model):
    _omitted_when_null = ("detail",)

    model: str
    request_id: str
    predictions: list[ImageResult]
    detail: Optional[str] = Field(None, description="set when no image could be classified")

    @classmethod
    def from_results(cls, model: str, request_id: str, results: list[ImageResult]) -> tuple[int, PredictResponse]:
        """The response and its HTTP status: 200 when any image was classified, else the images' status."""
        if any(r.error is None for r in results):
            return 200, cls(model=model, request_id=request_id, predictions=results)
        codes = {r.status for r in results}
        status = codes.pop() if len(codes) == 1 else 422
        detail = results[0].error if len(results) == 1 else f"none of the {len(results)} images could be classified"
        return status, cls(model=model, request_id=request_id, predictions=results, detail=detail)


class ErrorResponse(_Model):
    detail: Any
    request_id: str = ""


# ---- GET /v1/model ----------------------------------------------------------------------------------------

class PreprocessInfo(_Model):
    interpolation: str
    crop_pct: float
    crop_mode: str


class ServingInfo(_Model):
    """How this server answers (its :class:`~imclass.serve.settings.ServeSettings`, resolved)."""

    max_batch: int
    max_wait_ms: float
    max_body_bytes: int
    max_files: int
    max_pending: int
    decode_workers: int
    auth: bool = Field(description="whether `/v1/*` needs an API key")


class ModelInfo(_Model):
    model_id: str
    name: str
    source: str
    task: Literal["single_label", "multi_label"]
    architecture: dict[str, Any] = Field(description="`family`, and `name` (timm) or `model_type` and "
                                                     "`architectures` (Hugging Face)")
    num_classes: int
    labels: list[str]
    input_size: list[int] = Field(description="(height, width)")
    preprocess: PreprocessInfo
    temperature: Optional[float] = None
    unknown_threshold: Optional[float] = None
    label_thresholds: Optional[list[float]] = None
    provenance: dict[str, Any]
    training: dict[str, Any] = Field(description="scalars of the training record (nested one level)")
    metrics: dict[str, Any] = Field(description="scalar metrics (nested one level; no matrices or lists)")
    device: str = Field(description="where the model runs (the requested device until it is built)")
    serving: ServingInfo

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, device: str, serving: ServingInfo) -> ModelInfo:
        arch = spec.architecture
        arch_summary = {"family": arch.get("family")}
        if arch.get("family") == "timm":
            arch_summary["name"] = arch.get("name")
        elif arch.get("family") == "hf":
            cfg = arch.get("config") or {}
            arch_summary["model_type"] = cfg.get("model_type")
            arch_summary["architectures"] = cfg.get("architectures")
        pre = spec.preprocess
        return cls(
            model_id=spec.model_id,
            name=spec.provenance.get("name") or spec.model_id,
            source=spec.source,
            task=spec.task,
            architecture=arch_summary,
            num_classes=spec.num_classes,
            labels=list(spec.labels),
            input_size=list(pre.input_size),
            preprocess=PreprocessInfo(interpolation=pre.interpolation, crop_pct=pre.crop_pct,
                                      crop_mode=pre.crop_mode),
            temperature=spec.temperature,
            unknown_threshold=spec.unknown_threshold,
            label_thresholds=spec.label_thresholds,
            provenance=spec.provenance,
            training=_scalars(spec.training),
            metrics=_scalars(spec.metrics),
            device=device,
            serving=serving,
        )


def _scalars(d: dict[str, Any] | None, depth: int = 0) -> dict[str, Any]:
    """Scalars, and scalars of nested objects one level down (no confusion matrices or per-item lists)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, dict) and depth == 0:
            sub = _scalars(v, 1)
            if sub:
                out[k] = sub
    return out


# ---- probes -------------------------------------------------------------------------------------------------

class Health(_Model):
    """``GET /healthz``: the process answers; the batcher's counters."""

    status: Literal["ok"] = "ok"
    uptime_s: float
    batches: int
    images: int
    mean_batch: float
    largest_batch: int
    infer_seconds: float = Field(description="model time, summed over the inference threads")
    inference_threads: int
    pending: int = Field(description="images in progress (decoding, queued or in the model)")


class Readiness(_Model):
    """``GET /readyz``: 200 once the model is loaded and warmed up, else 503 with why."""

    _omitted_when_null = ("model", "detail")

    status: Literal["ready", "starting", "stopping", "failed"]
    model: Optional[str] = Field(None, description="when ready: the model served")
    detail: Optional[str] = Field(None, description="when failed: why the model cannot serve")
