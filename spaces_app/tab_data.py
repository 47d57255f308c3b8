"""Dataset explorer tab: a saved dataset or a shared-data source, filtered by split / label / view, paged through
with prompts, reports and labels, and the label distribution of the selection."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import gradio as gr
import pandas as pd
from state import AppState
from ui import CheckedNumber, figure, message_figure, save_png, thumbnail

PAGE_SIZE = 12
ANY = "any"
NO_FINDING = "no finding"
UNKNOWN_VIEW = "unknown"
#: Text columns shown next to the prompt when a source has them (reports, notes, subtypes).
TEXT_COLUMNS = ("subtype", "finding", "clinical_notes", "findings", "impression", "indication", "class_name")
TABLE_COLUMNS = ["row", "labels", "view", "sex", "age", "patient_id", "prompt", "report / notes"]


@dataclass
class DataTab:
    source: gr.Dropdown


def source_choices(state: AppState) -> list[tuple[str, str]]:
    return [(s.label, s.id) for s in state.sources().values()]


def _label_names(labels) -> list[str]:
    return list(labels) if len(labels) else [NO_FINDING]


def _view_name(view) -> str:
    return view if isinstance(view, str) and view else UNKNOWN_VIEW


def filtered(state: AppState, source: str, split: str, label: str, view: str) -> pd.DataFrame:
    frame = state.frame(source, split)
    mask = pd.Series(True, index=frame.index)
    if view and view != ANY:
        mask &= frame["view"].map(_view_name) == view if "view" in frame else False
    if label and label != ANY:
        mask &= frame["labels"].map(lambda ls: label in _label_names(ls))
    return frame[mask]


def distribution_plot(frame: pd.DataFrame, title: str):
    counts = Counter(name for labels in frame["labels"] for name in _label_names(labels))
    if not counts:
        return message_figure("No images match the filters.")
    top = counts.most_common(15)[::-1]
    fig = figure(5.6, max(2.4, 0.32 * len(top) + 1.0))
    ax = fig.add_subplot()
    ax.barh([n for n, _ in top], [c for _, c in top], color="#4f6d8f")
    for i, (_, c) in enumerate(top):
        ax.annotate(f"{c:,}", (c, i), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("images")
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(x=0.15)
    return fig


def _report(row: pd.Series) -> str:
    parts = []
    for column in TEXT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            parts.append(f"{column}: {value.strip()}")
    text = " | ".join(parts)
    return text if len(text) <= 400 else text[:399] + "..."


def make_fns(state: AppState):
    def browse(source, split, label, view, page):
        """One page of images with their prompts, reports and labels, and the label distribution of the selection."""
        ds = state.split(source, split)
        frame = filtered(state, source, split, label, view)
        pages = max(1, math.ceil(len(frame) / PAGE_SIZE))
        page = min(max(1, int(page or 1)), pages)
        rows = frame.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        gallery, table = [], []
        folder = state.new_output_dir() if len(rows) else None
        for index, row in rows.iterrows():
            labels = ", ".join(_label_names(row["labels"]))
            image = ds[int(index)]["image"]
            gallery.append((save_png(thumbnail(image.convert("L"), 320), folder, f"row{index}"), f"#{index} {labels}"))
            age = row.get("age")
            table.append([int(index), labels, _view_name(row.get("view")), row.get("sex") or "",
                          None if age is None or (isinstance(age, float) and math.isnan(age)) else int(age),
                          row.get("patient_id") or "", row.get("prompt") or "", _report(row)])
        whole = state.frame(source, split)
        summary = (f"**{len(frame):,}** of {len(whole):,} images in `{split}` match "
                   f"(label: {label or ANY}, view: {view or ANY}); page {page} of {pages}.")
        plot = distribution_plot(frame, f"Labels in {split} ({len(frame):,} images)")
        return gallery, pd.DataFrame(table, columns=TABLE_COLUMNS), plot, summary, page

    def open_source(source):
        """Load a dataset; returns its splits, labels and views for the filters and its first page."""
        dsd = state.dataset(source)
        splits = list(dsd)
        if not splits:
            raise gr.Error("The dataset has no splits.")
        split = "train" if "train" in splits else splits[0]
        labels, views = Counter(), Counter()
        for name in splits:
            frame = state.frame(source, name)
            labels.update(n for ls in frame["labels"] for n in _label_names(ls))
            if "view" in frame:
                views.update(frame["view"].map(_view_name))
        label_choices = [ANY] + [n for n, _ in labels.most_common()]
        view_choices = [ANY] + [n for n, _ in views.most_common()]
        return (gr.Dropdown(choices=splits, value=split), gr.Dropdown(choices=label_choices, value=ANY),
                gr.Dropdown(choices=view_choices, value=ANY), *browse(source, split, ANY, ANY, 1))

    def refresh():
        """The datasets the explorer can open (saved datasets and shared-data sources)."""
        choices = source_choices(state)
        note = (f"{len(choices)} dataset{'s' if len(choices) != 1 else ''} found." if choices else
                "No dataset found: build one with `cxr-diffusers data build ... --out data/NAME`, or start the app "
                "with --data-dir / --shared-data.")
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None), note

    return browse, open_source, refresh


def build(state: AppState) -> DataTab:
    choices = source_choices(state)
    browse, open_source, refresh = make_fns(state)
    with gr.Row(equal_height=True):
        source = gr.Dropdown(choices, value=None, label="Dataset", allow_custom_value=True, scale=4,
                             elem_id="data-source")
        refresh_btn = gr.Button("Refresh list", size="md", scale=0, min_width=130)
        open_btn = gr.Button("Open", variant="primary", size="md", scale=0, min_width=100, elem_id="data-open")
    sources_note = gr.Markdown(
        f"{len(choices)} dataset{'s' if len(choices) != 1 else ''} found." if choices else
        "No dataset found: build one with `cxr-diffusers data build ... --out data/NAME`, or start the app with "
        "`--data-dir` / `--shared-data`."
    )
    with gr.Row(equal_height=True):
        split = gr.Dropdown([], label="Split", allow_custom_value=True)
        label = gr.Dropdown([ANY], value=ANY, label="Label", allow_custom_value=True)
        view = gr.Dropdown([ANY], value=ANY, label="View", allow_custom_value=True)
        with gr.Row(equal_height=True):
            prev_btn = gr.Button("< Prev", size="md", min_width=80)
            page = CheckedNumber(1, label="Page", precision=0, minimum=1, maximum=10**7, min_width=80)
            next_btn = gr.Button("Next >", size="md", min_width=80)
    summary = gr.Markdown("Choose a dataset and press **Open**.", elem_id="data-summary")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", format="png", columns=4, height="auto", object_fit="contain",
                                 preview=False, elem_id="data-gallery")
        with gr.Column(scale=2):
            plot = gr.Plot(label="Label distribution", format="png", show_label=False)
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Prompts, reports and labels of this page", interactive=False,
                         wrap=True, max_height=420, column_widths=["5%", "12%", "7%", "6%", "5%", "9%", "30%", "26%"])

    browse_outputs = [gallery, table, plot, summary, page]
    refresh_btn.click(refresh, None, [source, sources_note], api_name="data_sources", concurrency_id="cpu_light")
    gr.on([open_btn.click, source.input], open_source, [source], [split, label, view, *browse_outputs],
          api_name="data_open", concurrency_id="cpu_light", trigger_mode="always_last")
    page.submit(browse, [source, split, label, view, page], browse_outputs, api_name="data_browse",
                concurrency_id="cpu_light", trigger_mode="always_last")
    gr.on([split.input, label.input, view.input], lambda *args: browse(*args, 1), [source, split, label, view],
          browse_outputs, api_visibility="private", concurrency_id="cpu_light", trigger_mode="always_last")
    prev_btn.click(lambda p: max(1, int(p or 1) - 1), page, page, api_visibility="private", queue=False).then(
        browse, [source, split, label, view, page], browse_outputs, api_visibility="private",
        concurrency_id="cpu_light")
    next_btn.click(lambda p: int(p or 1) + 1, page, page, api_visibility="private", queue=False).then(
        browse, [source, split, label, view, page], browse_outputs, api_visibility="private",
        concurrency_id="cpu_light")
    return DataTab(source)
