"""The demo page: two tabs, a text and a table row, each walking through the four steps of an
encrypted prediction and showing what each step made and cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from client.demo.rows import HEADERS, example_lines
from client.demo.settings import DemoSettings
from client.demo.steps import TABULAR, TEXT, DemoTab

EXAMPLES = [
    "Thank you so much, the crew was wonderful and we landed early!",
    "Three hours on the tarmac, then they lost my luggage. Never again.",
    "Does the 7am flight to Denver still have seats in economy?",
]

WHO_SEES_WHAT = """
| | this demo's client (your browser session) | the server |
|---|---|---|
| your {noun} and its {prepared} | yes | **never** |
| the private key | yes | **never** |
| the evaluation keys | yes | yes (they cannot decrypt) |
| the encrypted {noun} and encrypted result | yes | yes (unreadable) |
| the prediction | yes | **never** |

The client part runs inside this demo's process, one per browser session, with keys of its own that
are deleted when the session ends. In a real deployment it runs on your own machine
(`fhe-client`), and only the evaluation keys and ciphertexts travel to the server.
"""

TEXT_INTRO = (
    "# Sentiment analysis on encrypted text\n"
    "The server predicts the sentiment of your message without ever seeing it: the "
    "message is turned into numbers and encrypted here, the server computes on the "
    "ciphertext with fully homomorphic encryption (FHE), and only you can decrypt the "
    "answer. Go through the four steps, or press **Run all steps**."
)

TABULAR_INTRO = (
    "# Prediction on an encrypted table row\n"
    "Edit the row below (it starts as a real example from the model's data; an empty value is "
    "imputed where the model's preprocessing allows it). The row is preprocessed and encrypted "
    "here, the server runs the model on the ciphertext with fully homomorphic encryption (FHE), "
    "and only you can decrypt the answer. Go through the four steps, or press **Run all steps**."
)

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def theme() -> gr.themes.Base:
    """Gradio's default look with local fonts: the page needs nothing from the internet."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


@dataclass(frozen=True)
class TabWords:
    """What differs between the tabs' layouts: the ids' prefix and the labels."""

    prefix: str
    intro: str
    prepared: str
    encrypt: str
    features_id: str
    features_label: str
    label: str


TEXT_WORDS = TabWords(
    "",
    TEXT_INTRO,
    "embedding",
    "Embed, quantize and encrypt",
    "embedding",
    "Embedding (reduced on your machine when the model ships a projection)",
    "Sentiment",
)
TABULAR_WORDS = TabWords(
    "tabular-",
    TABULAR_INTRO,
    "preprocessed features",
    "Preprocess, quantize and encrypt",
    "tabular-features",
    "Preprocessed features",
    "Prediction",
)


class DemoPage:
    """The Gradio page: a text tab and a tabular tab, each with its own model and sessions."""

    def __init__(self, settings: DemoSettings, sessions_root: Path) -> None:
        self.settings = settings
        self.text = DemoTab(settings.server_url, settings.model, sessions_root, TEXT)
        self.tabular = DemoTab(settings.server_url, settings.tabular_model, sessions_root, TABULAR)

    def close_session(self, request: gr.Request) -> None:
        """The browser tab went away: delete its keys of both tabs now."""
        for tab in (self.text, self.tabular):
            tab.close_session(request)

    def warm_up(self) -> None:
        """Load the embedder and the preprocessing before the first visitor needs them."""
        for tab in (self.text, self.tabular):
            tab.warm_up()

    def load_row(self) -> tuple[str, pd.DataFrame]:
        """The tabular model's line and its example row in the editor, or why it cannot be used
        (and an empty editor)."""
        try:
            card = self.tabular.card()
        except Exception as error:
            return self.tabular.error(error), pd.DataFrame(columns=HEADERS)
        about = self.tabular.describe(card)
        assert card.metadata is not None  # DemoTab.card refuses a card without it
        if card.metadata.description:
            about += f"\n\n{card.metadata.description}"
        lines = example_lines(card.metadata.input)
        return about, pd.DataFrame(lines, columns=HEADERS)

    def example_row(self) -> pd.DataFrame:
        """The editor back at the example row (empty when the model cannot be used)."""
        return self.load_row()[1]

    def build(self) -> gr.Blocks:
        """Lay out the page and wire its events."""
        with gr.Blocks(title="Encrypted predictions", analytics_enabled=False) as page:
            with gr.Tabs():
                with gr.Tab(f"Text: {self.settings.model}", elem_id="text-tab"):
                    card, _ = self._steps(self.text, TEXT_WORDS, self._message)
                    page.load(self.text.describe_model, outputs=card)
                with gr.Tab(f"Table row: {self.settings.tabular_model}", elem_id="tabular-tab"):
                    card, row = self._steps(self.tabular, TABULAR_WORDS, self._row)
                    page.load(self.load_row, outputs=[card, row])
            page.unload(self.close_session)
        return page

    def _message(self) -> gr.Textbox:
        """The text tab's input: a message, with examples to pick."""
        message = gr.Textbox(
            label="Your message",
            lines=2,
            max_length=1000,
            elem_id="message",
            placeholder="Type a tweet-like message about a flight",
        )
        gr.Examples(EXAMPLES, inputs=message, label="Example messages")
        return message

    def _row(self) -> gr.Dataframe:
        """The tabular tab's input: the row editor, one line per column, and a reset button."""
        row = gr.Dataframe(
            headers=HEADERS,
            datatype=["str", "str", "str"],
            type="array",
            label="Your row (edit the values)",
            interactive=True,
            static_columns=[0, 1],
            column_widths=["45%", "15%", "40%"],
            max_height=420,
            elem_id="tabular-row",
        )
        reset = gr.Button("Back to the example row", size="sm", elem_id="tabular-reset")
        reset.click(self.example_row, outputs=row)
        return row

    def _steps(
        self, tab: DemoTab, words: TabWords, make_input: Callable[[], Any]
    ) -> tuple[gr.Markdown, Any]:
        """One tab's four steps and their events; returns its model card and input, which the
        page fills when it loads."""
        p, noun = words.prefix, tab.takes.noun
        session = gr.State(
            None,
            time_to_live=self.settings.session_ttl,
            delete_callback=lambda s: s.close() if s is not None else None,
        )
        gr.Markdown(words.intro)
        model_card = gr.Markdown(elem_id=f"{p}model-card")
        with gr.Accordion("Who sees what", open=True):
            gr.Markdown(WHO_SEES_WHAT.format(noun=noun, prepared=words.prepared))
        run_all_button = gr.Button("Run all steps", variant="primary", elem_id=f"{p}run-all")

        gr.Markdown("## 1. Generate keys · on the client")
        keygen_button = gr.Button("Generate keys", elem_id=f"{p}keygen")
        key_info = gr.Markdown(elem_id=f"{p}key-info")

        gr.Markdown(f"## 2. {words.encrypt} · on the client")
        item = make_input()
        encrypt_button = gr.Button(words.encrypt, elem_id=f"{p}encrypt")
        with gr.Row():
            features = gr.Textbox(
                label=f"{words.features_label} (first values)", elem_id=words.features_id
            )
            quantized = gr.Textbox(
                label="Quantized integers (first values)", elem_id=f"{p}quantized"
            )
        ciphertext = gr.Textbox(
            label=f"Encrypted {noun} (hex preview)", lines=3, elem_id=f"{p}ciphertext"
        )
        encrypt_info = gr.Markdown(elem_id=f"{p}encrypt-info")

        gr.Markdown(f"## 3. Run the model on the encrypted {noun} · on the server")
        run_button = gr.Button("Send to the server and run FHE", elem_id=f"{p}run")
        result = gr.Textbox(label="Encrypted result (hex preview)", lines=3, elem_id=f"{p}result")
        run_info = gr.Markdown(elem_id=f"{p}run-info")

        gr.Markdown("## 4. Decrypt · on the client")
        decrypt_button = gr.Button("Decrypt", elem_id=f"{p}decrypt")
        label = gr.Label(label=words.label, num_top_classes=3, elem_id=f"{p}label")
        verdict = gr.Markdown(elem_id=f"{p}verdict")

        encrypt_outputs = [features, quantized, ciphertext, encrypt_info]
        keygen_button.click(tab.keygen, inputs=session, outputs=[session, key_info])
        later = [result, run_info, label, verdict]
        encrypt_button.click(
            tab.encrypt_step, inputs=[session, item], outputs=[*encrypt_outputs, *later]
        )
        run_button.click(tab.run_step, inputs=session, outputs=later)
        decrypt_button.click(tab.decrypt, inputs=session, outputs=[label, verdict])
        steps = [session, key_info, *encrypt_outputs, result, run_info, label, verdict]
        run_all_button.click(tab.run_all, inputs=[session, item], outputs=steps)
        return model_card, item
