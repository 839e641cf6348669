"""The four steps of one demo tab as Gradio handlers: one model, a session per browser tab.

The text tab and the tabular tab differ only in their input (a message, a table row) and in the
words for it; the steps, what they show and what they cost are the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from client.api import FHEServerAPI
from client.demo.card import describe_card
from client.demo.messages import StepOrderError, explain
from client.demo.preview import hex_preview, number_preview, size_text
from client.demo.rows import describe_row, row_of
from client.demo.session import DemoSession
from client.encrypted_model import Decrypted, EncryptedModel
from client.errors import ClientError
from client.settings import ClientSettings
from fhe.contract.model_card import FheModelCard

log = logging.getLogger(__name__)


def _quoted(item: Any, _example: dict[str, Any] | None) -> str:
    """A message in a few words, quoted."""
    return f"“{_shorten(str(item or ''))}”"


@dataclass(frozen=True)
class InputKind:
    """What a tab's model takes, the words the page uses for it, and how the tab reads and
    shows one input (the one place where the two tabs differ)."""

    kind: str
    """The model's input kind (`text` or `tabular`), checked against its card."""
    noun: str
    """One input: `message`, `row`."""
    prepare: str
    """What the client does before quantizing: `embedding`, `preprocessing`."""
    setting: str
    """The variable that names this tab's model."""
    read: Callable[[Any], Any]
    """The input as the client takes it, from the page's component value."""
    describe: Callable[[Any, dict[str, Any] | None], str]
    """The input in a few words (given the card's example row), for the step results."""


TEXT = InputKind("text", "message", "embedding", "FHE_DEMO_MODEL", lambda value: value, _quoted)
TABULAR = InputKind(
    "tabular", "row", "preprocessing", "FHE_DEMO_TABULAR_MODEL", row_of, describe_row
)
KIND_NAMES = {"text": "text", "tabular": "table rows", "raw": "bare arrays of numbers"}


class DemoTab:
    """The handlers of one tab; per-session state lives in a `gr.State` the page passes in."""

    def __init__(self, server_url: str, model: str, sessions_root: Path, takes: InputKind) -> None:
        self.server_url = server_url
        self.model = model
        self.sessions_root = sessions_root
        self.takes = takes
        self._open: dict[str, DemoSession] = {}
        self._open_lock = threading.Lock()

    def error(self, error: Exception) -> str:
        """An error as the page shows it: a sentence, logged with its trace when unexpected."""
        if not isinstance(error, RuntimeError | ValueError | OSError):
            log.exception("demo step failed")
        return f"**Error:** {explain(error, self.server_url)}"

    def _session(self, session: DemoSession | None, request: gr.Request | None) -> DemoSession:
        if session is None or session.closed:
            session = DemoSession(
                self.server_url, self.model, self.sessions_root, noun=self.takes.noun
            )
            if request is not None and request.session_hash:
                with self._open_lock:
                    self._open[request.session_hash] = session
        return session

    def close_session(self, request: gr.Request) -> None:
        """The browser tab went away: delete its keys now rather than when its state expires."""
        with self._open_lock:
            session = self._open.pop(request.session_hash or "", None)
        if session is not None:
            session.close()

    def warm_up(self) -> None:
        """Load what the client prepares inputs with (the embedder, or the preprocessing) before
        the first visitor needs it (best effort)."""
        try:
            with FHEServerAPI(self.server_url, timeout=60) as api:
                remote = EncryptedModel(
                    api,
                    self.model,
                    self.sessions_root / "warm-up",
                    embedder_cache=ClientSettings().embedders_dir(),
                )
                remote.input.warm_up()
        except Exception as error:
            log.warning("%s of %s not preloaded: %s", self.takes.prepare, self.model, error)

    def card(self) -> FheModelCard:
        """The model's card from the server; ClientError unless it is a ready FHE model that
        takes this tab's input."""
        with FHEServerAPI(self.server_url, timeout=10) as api:
            card = api.model(self.model)
        if not isinstance(card, FheModelCard):
            raise ClientError(f"model `{self.model}` is not an FHE model.")
        if not card.ready or card.metadata is None:
            raise ClientError(f"the server cannot load `{self.model}`: {card.reason}")
        kind = card.metadata.input.kind
        if kind != self.takes.kind:
            raise ClientError(
                f"model `{self.model}` takes {KIND_NAMES.get(kind, kind)}, not "
                f"{KIND_NAMES[self.takes.kind]}: set {self.takes.setting} to a "
                f"{self.takes.kind} FHE model on the server."
            )
        return card

    def describe(self, card: FheModelCard) -> str:
        """A line about the model, shown when the page opens."""
        return describe_card(card, self.model, self.server_url, self.takes.noun)

    def describe_model(self) -> str:
        """A line about the model, or why it cannot be used."""
        try:
            return self.describe(self.card())
        except Exception as error:
            return self.error(error)

    def item_of(self, value: Any) -> Any:
        """The input as the client takes it: the message, or the row from the editor's lines."""
        return self.takes.read(value)

    def shown(self, session: DemoSession, item: Any) -> str:
        """The input in a few words, for the step results."""
        return self.takes.describe(item, getattr(session.remote.metadata.input, "example", None))

    def keygen(
        self, session: DemoSession | None, request: gr.Request | None = None
    ) -> tuple[DemoSession | None, str]:
        """Step 1: generate this session's keys and upload the evaluation keys."""
        try:
            session = self._session(session, request)
            info = session.generate_keys()
        except Exception as error:
            return session, self.error(error)
        sent = (
            f"uploaded in **{info.upload_seconds:.2f} s**"
            if info.uploaded
            else f"already held by the server (asked in **{info.upload_seconds:.2f} s**)"
        )
        return session, (
            f"**Keys ready.** Key id `{info.key_id}`. Evaluation keys: "
            f"**{size_text(info.evaluation_key_bytes)}**, generated in "
            f"**{info.keygen_seconds:.2f} s** and {sent}. "
            "The private key stays in this session's client; the server only has the evaluation "
            "keys, which can compute on ciphertexts but cannot decrypt them."
        )

    def encrypt(self, session: DemoSession | None, value: Any) -> tuple[str, str, str, str]:
        """Step 2: prepare (embed or preprocess), quantize and encrypt the input."""
        try:
            if session is None:
                raise _NoKeys()
            item = self.item_of(value)
            encrypted = session.encrypt(item)
        except Exception as error:
            return "", "", "", self.error(error)
        took = encrypted.seconds
        return (
            number_preview(encrypted.features),
            number_preview(encrypted.quantized, shown=16, floats=False),
            hex_preview(encrypted.ciphertext),
            f"**Encrypted** {self.shown(session, item)} in **{took:.2f} s** "
            f"({self.takes.prepare} {encrypted.prepare_seconds:.2f} s, "
            f"quantize and encrypt {encrypted.encrypt_seconds:.2f} s). Ciphertext: "
            f"**{size_text(len(encrypted.ciphertext))}**; this is all the server will get.",
        )

    def run(
        self, session: DemoSession | None, progress: gr.Progress = gr.Progress()
    ) -> tuple[str, str]:
        """Step 3: the server runs the model on the ciphertext."""
        try:
            if session is None:
                raise _NoKeys()
            expected = session.remote.expected_fhe_seconds or 2.0

            def waiting(seconds: float) -> None:
                fraction = min(seconds / (expected * 1.2), 0.99)
                progress(fraction, desc=f"FHE on the server: {seconds:.1f} s")

            result = session.run(waiting)
        except Exception as error:
            return "", self.error(error)
        answer = result.answer
        return hex_preview(answer.ciphertext), (
            f"**Done** for {self.shown(session, session.item)}. Encrypted result: "
            f"**{size_text(len(answer.ciphertext))}**. Server time "
            f"**{answer.server_seconds:.2f} s** (FHE {answer.fhe_seconds:.2f} s), round trip "
            f"{result.round_trip_seconds:.2f} s. The server computed this without being able to "
            f"read the {self.takes.noun} or the result."
        )

    def encrypt_step(self, session: DemoSession | None, value: Any) -> tuple[Any, ...]:
        """The encrypt button: a new ciphertext, so the old result and label are cleared."""
        return (*self.encrypt(session, value), "", "", None, "")

    def run_step(
        self, session: DemoSession | None, progress: gr.Progress = gr.Progress()
    ) -> tuple[Any, ...]:
        """The run button: a new encrypted result, so the old label is cleared."""
        return (*self.run(session, progress), None, "")

    def decrypt(self, session: DemoSession | None) -> tuple[dict[str, float] | str | None, str]:
        """Step 4: decrypt the result with this session's private key."""
        try:
            if session is None:
                raise _NoKeys()
            decrypted = session.decrypt()
        except Exception as error:
            return None, self.error(error)
        shown, answer = _answer(decrypted)
        return shown, (
            f"{answer} for {self.shown(session, session.item)} (decrypted "
            f"here in {decrypted.seconds:.3f} s; only this session's private key can do that)."
        )

    def run_all(
        self,
        session: DemoSession | None,
        value: Any,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[list[Any]]:
        """All four steps in a row, showing each one as it finishes; stops at the first error."""
        shown: list[Any] = [session, gr.skip(), "", "", "", "", "", "", None, ""]
        if session is None or session.keys is None:
            progress(0.05, desc="generating keys")
            session, shown[1] = self.keygen(session, request)
            shown[0] = session
            yield shown
            if session is None or session.keys is None:
                return
        progress(0.3, desc=f"{self.takes.prepare} and encrypting")
        shown[2:6] = self.encrypt(session, value)
        yield shown
        if session.encrypted is None or session.item != self.item_of(value):
            return
        shown[6:8] = self.run(session, progress)
        yield shown
        if session.result is None:
            return
        shown[8:10] = self.decrypt(session)
        yield shown


def _answer(decrypted: Decrypted) -> tuple[dict[str, float] | str, str]:
    """What the label component shows (class scores, or the value) and the verdict's words."""
    if decrypted.label is not None:
        return decrypted.scores, f"Prediction: **{decrypted.label}**"
    if decrypted.value is not None:
        return f"{decrypted.value:.4g}", f"Predicted value: **{decrypted.value:.4g}**"
    values = ", ".join(f"{value:.4g}" for value in decrypted.output or [])
    return values, f"Output: **[{values}]**"


class _NoKeys(StepOrderError):
    def __str__(self) -> str:
        return "Generate the keys first (step 1)."


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
