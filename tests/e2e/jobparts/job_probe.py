"""A test instrument for the server side of a job: records what the server holds and receives.

Writes one JSON line per observation to ``path``:

- ``{"kind": "global_model", "round": r, "sha256": ...}`` when the initial model is loaded
  (round -1) and at the end of each round (the new global model);
- ``{"kind": "train_result", "client": ..., "data_kind": ..., "max_abs": ..., "zero_fraction": ...,
  "n_steps": ...}`` for each train result the server receives (after the sites' filters).
"""

import hashlib
import json
import threading

import numpy as np
from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType


class JobProbe(FLComponent):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._lock = threading.Lock()

    def _write(self, record: dict) -> None:
        with self._lock, open(self._path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type in (AppEventType.INITIAL_MODEL_LOADED, AppEventType.ROUND_DONE):
            model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
            weights = model[ModelLearnableKey.WEIGHTS] if model else {}
            digest = hashlib.sha256()
            for name in sorted(weights):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(np.asarray(weights[name], dtype=np.float32)).tobytes())
            round_ = (
                -1 if event_type == AppEventType.INITIAL_MODEL_LOADED else fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            )
            self._write({"kind": "global_model", "round": round_, "sha256": digest.hexdigest()})
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            if fl_ctx.get_prop(FLContextKey.TASK_NAME) != "train":
                return
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            if result is None or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                return
            dxo = from_shareable(result)
            values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in dxo.data.values()])
            peer = fl_ctx.get_peer_context()
            self._write(
                {
                    "kind": "train_result",
                    "client": peer.get_identity_name() if peer else None,
                    "data_kind": dxo.data_kind,
                    "max_abs": float(np.abs(values).max()),
                    "zero_fraction": float(np.mean(values == 0)),
                    "size": int(values.size),
                    "n_steps": dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND),
                }
            )
