"""ExceptionForwarder: a client's failed task result becomes an entry in the hub's logs for its trust.

It watches every result a client submits, whichever controller runs (it listens to the server's
BEFORE_PROCESS_SUBMISSION event; no controller is changed). When a result comes back with an error
return code (EXECUTION_EXCEPTION and the like), the exception text the client put in the reply's
``exception`` header (already sanitized on the client by the FLIP runners) is sent to the hub's
logs endpoint, attributed to that client's trust. So is an evaluation result that carries some
models' metrics and names the models whose evaluation failed (the ``flip_model_failures`` header of
EvaluatorRunner). A result without that header (an executor that
raised) is reported with a short note saying so; its traceback stays in the site's log.

Everything taken from the client's reply is sanitized again here, because a client app can set
any header or return code: the return code is named only if it is one of NVFlare's, and the text
goes through :func:`~flip_nvflare.executors.sanitize.sanitize_hub_text` (identifier shapes, data
paths, SQL) before it is cut to its maximum length.
"""

from __future__ import annotations

from collections.abc import Sequence

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import HubWidget, peer_name, result_round
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipHeaders
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import hub_return_code, sanitize_hub_text

#: Return codes that are not a client failure worth reporting by default.
DEFAULT_IGNORED_RETURN_CODES = (ReturnCode.OK, ReturnCode.TASK_ABORTED)

_MAX_TEXT = 16 * 1024
_MAX_NAME = 200


class ExceptionForwarder(HubWidget):
    """Sends the exception text of failed client results to the hub's logs.

    Args:
        flip_id: Id of the FlipBackend component.
        ignore_return_codes: Return codes not reported (default: ``OK`` and ``TASK_ABORTED``,
            which clients send when the run is stopping).
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID, ignore_return_codes: Sequence[str] | None = None) -> None:
        super().__init__(flip_id)
        ignored = DEFAULT_IGNORED_RETURN_CODES if ignore_return_codes is None else tuple(ignore_return_codes)
        if not all(isinstance(rc, str) for rc in ignored):
            raise FlipConfigError("ExceptionForwarder ignore_return_codes must be a list of return code names.")
        self._ignored = frozenset(ignored) | {ReturnCode.OK}

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Report failed results."""
        if event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT, None)
            client = peer_name(fl_ctx)
            if not isinstance(result, Shareable) or client is None:
                return
            return_code = result.get_return_code(ReturnCode.OK)
            failed_models = result.get_header(FlipHeaders.MODEL_FAILURES, None)
            partial = return_code == ReturnCode.OK and isinstance(failed_models, dict) and bool(failed_models)
            if return_code in self._ignored and not partial:
                return
            # the task name and return code come with the client's reply: only safe forms go on
            task_name = sanitize_hub_text(fl_ctx.get_prop(FLContextKey.TASK_NAME, "") or "task", _MAX_NAME)
            round_ = result_round(result)
            if partial:
                assert isinstance(failed_models, dict)
                codes = sorted({hub_return_code(code) for code in failed_models.values()})
                shown_code = ", ".join(codes)
                models: str | None = ", ".join(sanitize_hub_text(str(name), _MAX_NAME) for name in failed_models)
            else:
                shown_code = hub_return_code(return_code)
                models = None
            session.journal.client_error(client, task_name, round_, shown_code)
            session.send_client_log(client, self._log_text(result, task_name, round_, shown_code, models))
            self.log_info(fl_ctx, f"{task_name} result of {client} failed ({shown_code}); reported to the hub.")

    @staticmethod
    def _log_text(
        result: Shareable, task_name: str, round_: int | None, return_code: str, models: str | None = None
    ) -> str:
        when = f" (round {round_})" if round_ is not None else ""
        if models:  # some models of an evaluation failed, the others' metrics came back
            head = f"Task '{task_name}'{when}: the evaluation of model(s) {models} failed with {return_code}."
        else:
            head = f"Task '{task_name}'{when} failed with {return_code}."
        text = result.get_header(FlipHeaders.EXCEPTION, None)
        if isinstance(text, str) and text.strip():
            # redact first, then cut: a cut must never leave part of an identifier visible
            text = sanitize_hub_text(text, 4 * _MAX_TEXT)
            if len(text) > _MAX_TEXT:
                text = text[:_MAX_TEXT] + "\n[truncated]"
            return f"{head}\n{text}"
        return f"{head} The site sent no exception text; its own log has the details."
