"""The demo page: four steps of an encrypted prediction, each showing what it made and cost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from client.api import FHEServerAPI
from client.demo.messages import explain
from client.demo.preview import hex_preview, number_preview, size_text
from client.demo.session import DemoSession
from client.demo.settings import DemoSettings
from client.encrypted_model import EncryptedModel

log = logging.getLogger(__name__)

EXAMPLES = [
    "Thank you so much, the crew was wonderful and we landed early!",
    "Three hours on the tarmac, then they lost my luggage. Never again.",
    "Does the 7am flight to Denver still have seats in economy?",
]

WHO_SEES_WHAT = """
| | this demo's client (your browser session) | the server |
|---|---|---|
| your message and its embedding | yes | **never** |
| the private key | yes | **never** |
| the evaluation keys | yes | yes (they cannot decrypt) |
| the encrypted message and encrypted result | yes | yes (unreadable) |
| the prediction | yes | **never** |

The client part runs inside this demo's process, one per browser session, with keys of its own that
are deleted when the session ends. In a real deployment it runs on your own machine
(`fhe-client`), and only the evaluation keys and ciphertexts travel to the server.
"""

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def theme() -> gr.themes.Base:
    """Gradio's default look with local fonts: the page needs nothing from the internet."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


class DemoPage:
    """The Gradio page and its handlers; per-session state lives in a `gr.State`."""

    def __init__(self, settings: DemoSettings, sessions_root: Path) -> None:
        self.settings = settings
        self.sessions_root = sessions_root
        self._open: dict[str, DemoSession] = {}
        self._open_lock = threading.Lock()

    def _error(self, error: Exception) -> str:
        if not isinstance(error, RuntimeError | ValueError | OSError):
            log.exception("demo step failed")
        return f"**Error:** {explain(error, self.settings.server_url)}"

    def _session(self, session: DemoSession | None, request: gr.Request | None) -> DemoSession:
        if session is None or session.closed:
            session = DemoSession(self.settings.server_url, self.settings.model, self.sessions_root)
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
        """Load the model's embedder before the first visitor needs it (best effort)."""
        try:
            with FHEServerAPI(self.settings.server_url, timeout=60) as api:
                remote = EncryptedModel(
                    api,
                    self.settings.model,
                    self.sessions_root / "warm-up",
                    embedder_cache=self.sessions_root / "embedders",
                )
                remote.embedder.load()
        except Exception as error:
            log.warning("embedder not preloaded: %s", error)

    def describe_model(self) -> str:
        """A line about the model, or why it cannot be used, shown when the page opens."""
        try:
            with FHEServerAPI(self.settings.server_url, timeout=10) as api:
                card = api.model(self.settings.model)
        except Exception as error:
            return self._error(error)
        if card.get("kind") != "fhe":
            return f"**Error:** model `{self.settings.model}` is not an FHE model."
        if card.get("status") != "ready":
            return (
                f"**Error:** the server cannot load `{self.settings.model}`: {card.get('reason')}"
            )
        metadata = card.get("metadata", {})
        metrics = metadata.get("metrics", {})
        circuit = metadata.get("circuit", {})
        params = circuit.get("params", {})
        facts = [f"labels: {', '.join(card['labels'])}"]
        if params:
            facts.append(
                f"{circuit.get('model_type', 'model')} with "
                + ", ".join(f"{key} {value}" for key, value in params.items())
            )
        if "simulated_accuracy" in metrics:
            facts.append(f"accuracy {metrics['simulated_accuracy']:.1%} on its test set")
        if "fhe_seconds_median" in metrics:
            facts.append(f"about {metrics['fhe_seconds_median']:.1f} s of FHE per message")
        return (
            f"Model **{self.settings.model}** on `{self.settings.server_url}`: "
            + "; ".join(facts)
            + "."
        )

    def keygen(
        self, session: DemoSession | None, request: gr.Request | None = None
    ) -> tuple[DemoSession | None, str]:
        """Step 1: generate this session's keys and upload the evaluation keys."""
        try:
            session = self._session(session, request)
            info = session.generate_keys()
        except Exception as error:
            return session, self._error(error)
        return session, (
            f"**Keys ready.** Key id `{info.key_id}`. Evaluation keys: "
            f"**{size_text(info.evaluation_key_bytes)}**, generated in "
            f"**{info.keygen_seconds:.2f} s** and uploaded in **{info.upload_seconds:.2f} s**. "
            "The private key stays in this session's client; the server only has the evaluation "
            "keys, which can compute on ciphertexts but cannot decrypt them."
        )

    def encrypt(self, session: DemoSession | None, text: str) -> tuple[str, str, str, str]:
        """Step 2: embed, quantize and encrypt the message."""
        try:
            if session is None:
                raise _NoKeys()
            encrypted = session.encrypt(text)
        except Exception as error:
            return "", "", "", self._error(error)
        took = encrypted.embed_seconds + encrypted.encrypt_seconds
        return (
            number_preview(encrypted.embedding),
            number_preview(encrypted.quantized, shown=16, floats=False),
            hex_preview(encrypted.ciphertext),
            f"**Encrypted** “{_shorten(text)}” in **{took:.2f} s** "
            f"(embedding {encrypted.embed_seconds:.2f} s, "
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
            return "", self._error(error)
        answer = result.answer
        return hex_preview(answer.ciphertext), (
            f"**Done** for “{_shorten(session.text or '')}”. Encrypted result: "
            f"**{size_text(len(answer.ciphertext))}**. Server time "
            f"**{answer.server_seconds:.2f} s** (FHE {answer.fhe_seconds:.2f} s), round trip "
            f"{result.round_trip_seconds:.2f} s. The server computed this without being able to "
            "read the message or the result."
        )

    def encrypt_step(self, session: DemoSession | None, text: str) -> tuple[Any, ...]:
        """The encrypt button: a new ciphertext, so the old result and label are cleared."""
        return (*self.encrypt(session, text), "", "", None, "")

    def run_step(
        self, session: DemoSession | None, progress: gr.Progress = gr.Progress()
    ) -> tuple[Any, ...]:
        """The run button: a new encrypted result, so the old label is cleared."""
        return (*self.run(session, progress), None, "")

    def decrypt(self, session: DemoSession | None) -> tuple[dict[str, float] | None, str]:
        """Step 4: decrypt the result with this session's private key."""
        try:
            if session is None:
                raise _NoKeys()
            decrypted = session.decrypt()
        except Exception as error:
            return None, self._error(error)
        return decrypted.scores, (
            f"Prediction: **{decrypted.label}** for “{_shorten(session.text or '')}” (decrypted "
            f"here in {decrypted.seconds:.3f} s; only this session's private key can do that)."
        )

    def build(self) -> gr.Blocks:
        """Lay out the page and wire its events."""
        with gr.Blocks(title="Encrypted sentiment analysis", analytics_enabled=False) as page:
            session = gr.State(
                None,
                time_to_live=self.settings.session_ttl,
                delete_callback=lambda s: s.close() if s is not None else None,
            )
            gr.Markdown(
                "# Sentiment analysis on encrypted text\n"
                "The server predicts the sentiment of your message without ever seeing it: the "
                "message is turned into numbers and encrypted here, the server computes on the "
                "ciphertext with fully homomorphic encryption (FHE), and only you can decrypt the "
                "answer. Go through the four steps, or press **Run all steps**."
            )
            model_card = gr.Markdown(elem_id="model-card")
            with gr.Accordion("Who sees what", open=True):
                gr.Markdown(WHO_SEES_WHAT)
            run_all_button = gr.Button("Run all steps", variant="primary", elem_id="run-all")

            gr.Markdown("## 1. Generate keys · on the client")
            keygen_button = gr.Button("Generate keys", elem_id="keygen")
            key_info = gr.Markdown(elem_id="key-info")

            gr.Markdown("## 2. Embed, quantize and encrypt · on the client")
            message = gr.Textbox(
                label="Your message",
                lines=2,
                max_length=1000,
                elem_id="message",
                placeholder="Type a tweet-like message about a flight",
            )
            gr.Examples(EXAMPLES, inputs=message, label="Example messages")
            encrypt_button = gr.Button("Embed, quantize and encrypt", elem_id="encrypt")
            with gr.Row():
                embedding = gr.Textbox(label="Embedding (first values)", elem_id="embedding")
                quantized = gr.Textbox(
                    label="Quantized integers (first values)", elem_id="quantized"
                )
            ciphertext = gr.Textbox(
                label="Encrypted message (hex preview)", lines=3, elem_id="ciphertext"
            )
            encrypt_info = gr.Markdown(elem_id="encrypt-info")

            gr.Markdown("## 3. Run the model on the encrypted message · on the server")
            run_button = gr.Button("Send to the server and run FHE", elem_id="run")
            result = gr.Textbox(label="Encrypted result (hex preview)", lines=3, elem_id="result")
            run_info = gr.Markdown(elem_id="run-info")

            gr.Markdown("## 4. Decrypt · on the client")
            decrypt_button = gr.Button("Decrypt", elem_id="decrypt")
            label = gr.Label(label="Sentiment", num_top_classes=3, elem_id="label")
            verdict = gr.Markdown(elem_id="verdict")

            encrypt_outputs = [embedding, quantized, ciphertext, encrypt_info]
            page.load(self.describe_model, outputs=model_card)
            page.unload(self.close_session)
            keygen_button.click(self.keygen, inputs=session, outputs=[session, key_info])
            later = [result, run_info, label, verdict]
            encrypt_button.click(
                self.encrypt_step, inputs=[session, message], outputs=[*encrypt_outputs, *later]
            )
            run_button.click(self.run_step, inputs=session, outputs=later)
            decrypt_button.click(self.decrypt, inputs=session, outputs=[label, verdict])
            steps = [session, key_info, *encrypt_outputs, result, run_info, label, verdict]
            run_all_button.click(self.run_all, inputs=[session, message], outputs=steps)
        return page

    def run_all(
        self,
        session: DemoSession | None,
        text: str,
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
        progress(0.3, desc="embedding and encrypting")
        shown[2:6] = self.encrypt(session, text)
        yield shown
        if session.encrypted is None or session.text != text:
            return
        shown[6:8] = self.run(session, progress)
        yield shown
        if session.result is None:
            return
        shown[8:10] = self.decrypt(session)
        yield shown


class _NoKeys(RuntimeError):
    def __str__(self) -> str:
        return "Generate the keys first (step 1)."


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
