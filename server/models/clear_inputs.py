"""What a clear model is asked and answers: the `inputs` of a JSON body, and a prediction whose
output can leave as strict JSON.

Every body a client can send is the client's error at worst (a 400 with a message), never a 500:
bad UTF-8, bad syntax, nesting past the recursion limit, integers longer than `int()` reads, lone
surrogate escapes, and outputs holding NaN or infinity.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from typing import Any

from server.models.clear import ClearModel, InvalidInputs, PredictionFailed

WARNINGS_MESSAGE = "There were warnings while running the model."
TOO_DEEP = "the body nests arrays or objects too deeply"
NOT_JSON_OUTPUT = (
    "the model's output holds NaN or infinity, which JSON cannot carry; the inputs are probably "
    "far outside the range the model was trained on"
)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A `\\uD800`-`\\uDFFF` escape: only bodies holding one can decode to a lone surrogate."""

# warnings.catch_warnings changes process-wide state, so predictions that record warnings
# run one at a time.
_predict_lock = threading.Lock()


def predict_strict(model: ClearModel, inputs: Any) -> tuple[Any, list[str]]:
    """Predict under the lock; PredictionFailed when the output cannot leave as strict JSON."""
    with _predict_lock:
        output, warnings = model.predict(inputs)
    try:
        # Responses refuse NaN and infinity, which a regression can reach on extreme inputs.
        json.dumps(output, allow_nan=False)
    except ValueError:
        raise PredictionFailed(NOT_JSON_OUTPUT, warnings) from None
    return output, warnings


def _check_unicode(payload: Any) -> None:
    """InvalidInputs for a lone UTF-16 surrogate: it is not text, and answers quoting it fail."""
    # JSON lets `\\ud800` stand alone; Python decodes it to a str that UTF-8 cannot encode.
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputs(
            "the body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
            "which is not a character"
        ) from None
    except RecursionError:
        raise InvalidInputs(TOO_DEEP) from None


def parse_inputs(body: bytes) -> Any:
    """The `inputs` of a JSON body; InvalidInputs (a 400, not a 500) for any body it cannot take."""
    # Bad UTF-8, bad syntax, nesting past the recursion limit, integers longer than int() reads
    # and lone surrogate escapes: each is the client's error, answered with a message.
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        # api-inference-community answers Python's own message; ours says what it is too.
        raise InvalidInputs(f"the body is not valid UTF-8: {error}", compat=str(error)) from None
    except json.JSONDecodeError as error:
        raise InvalidInputs(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInputs(TOO_DEEP) from None
    except ValueError:
        # json.loads turns integer literals into int, which refuses more digits than the limit.
        raise InvalidInputs(
            f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if _SURROGATE_ESCAPE.search(body):
        _check_unicode(payload)
    if (
        isinstance(payload, dict)
        and "inputs" not in payload
        and isinstance(payload.get("table"), dict)
    ):
        # huggingface_hub's InferenceClient sends tabular rows as {"table": {column: [...]}}.
        return {"data": payload["table"]}
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInputs('the body must be a JSON object with an "inputs" key')
    return payload["inputs"]
