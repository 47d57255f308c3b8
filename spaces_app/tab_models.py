"""Model analysis tab: the pipeline's components, parameter counts (total / trainable), memory footprint, configs and
scheduler, a plot of parameters per component; the same for the pneumonia classifier."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gradio as gr
import pandas as pd
from state import AppState
from ui import figure, human, jsonable, message_figure

TABLE_COLUMNS = ["component", "class", "parameters", "trainable", "memory (MB)", "dtype"]


@dataclass
class ModelsTab:
    refresh: gr.Button


def _process_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _grouped_bars(names, totals, trainables, title):
    fig = figure(6.2, 3.2)
    ax = fig.add_subplot()
    x = range(len(names))
    width = 0.38
    ax.bar([i - width / 2 for i in x], totals, width, label="total", color="#4f6d8f")
    ax.bar([i + width / 2 for i in x], trainables, width, label="trainable", color="#d08c3a")
    for i, (t, tr) in enumerate(zip(totals, trainables)):
        if t == tr:  # one label over both bars
            ax.annotate(f"{human(t)} (all trainable)" if len(names) < 5 else human(t), (i, t), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
            continue
        ax.annotate(human(t), (i - width / 2, t), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
        ax.annotate(human(tr), (i + width / 2, tr), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("parameters")
    ax.set_title(title, fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.18)
    return fig


def pipeline_info(state: AppState):
    """Summary markdown, components table, plot, configs and scheduler of the loaded pipeline."""
    from cxr_diffusers.commands.info import describe_pipeline

    if state.pipe is None:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        return (f"**Model not available.** {state.pipe_error}", empty, message_figure("No model loaded"), {}, {})
    info = describe_pipeline(state.pipe)
    rows, names, totals, trainables = [], [], [], []
    for name, entry in info["components"].items():
        rows.append([name, entry["class"], entry.get("parameters"), entry.get("trainable_parameters"),
                     entry.get("memory_mb"), entry.get("dtype") or ""])
        if "parameters" in entry:
            names.append(name)
            totals.append(entry["parameters"])
            trainables.append(entry["trainable_parameters"])
    trainable = sum(trainables)
    rss = _process_rss_mb()
    summary = (
        f"**{state.config.model}** on `{state.pipe.device}`: **{human(info['total_parameters'])} parameters** "
        f"({info['total_parameters']:,}; {trainable:,} trainable), **{info['total_memory_mb']:.1f} MB of weights**; "
        f"default size {info['default_size']}x{info['default_size']} (multiples of {info['size_multiple']}); "
        f"scheduler `{type(state.pipe.scheduler).__name__}`; "
        + (f"super-resolution stage to {' and '.join(map(str, state.pipe.super_resolution_sizes))} px; "
           if state.pipe.super_resolution is not None else "no super-resolution stage; ")
        + f"loaded in {state.pipe_load_seconds or 0:.1f} s"
        + (f"; app process memory {rss:,.0f} MB." if rss else ".")
    )
    configs = {name: entry.get("config", {}) for name, entry in info["components"].items() if entry.get("config")}
    tokenizer = info["components"].get("tokenizer")
    if tokenizer:
        configs["tokenizer"] = {"class": tokenizer["class"], "vocab_size": tokenizer.get("vocab_size")}
    scheduler = {"class": type(state.pipe.scheduler).__name__,
                 **{k: v for k, v in dict(state.pipe.scheduler.config).items() if not k.startswith("_")}}
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    plot = _grouped_bars(names, totals, trainables, "Pipeline parameters per component")
    return summary, table, plot, jsonable(configs), jsonable(scheduler)


def classifier_info(state: AppState):
    """Summary markdown, per-block table and plot of the pneumonia classifier (or why it is missing)."""
    empty = pd.DataFrame(columns=["block", "parameters", "trainable", "memory (MB)"])
    if not state.classifier_available():
        return (f"**No classifier yet** at `{state.config.classifier}`: train one with "
                "`train_scripts/train_classifier.py` or start the app with `--classifier PATH`.", empty,
                message_figure("No classifier loaded"), {})
    try:
        model, processor = state.get_classifier()
    except gr.Error as err:
        return f"**Classifier not available.** {err.message}", empty, message_figure("No classifier loaded"), {}
    blocks = []
    resnet = getattr(model, "resnet", None)
    if resnet is not None:
        blocks.append(("embedder", resnet.embedder))
        for i, stage in enumerate(resnet.encoder.stages):
            blocks.append((f"stage {i + 1}", stage))
    blocks.append(("head", getattr(model, "classifier", model)))
    rows = []
    for name, module in blocks:
        params = list(module.parameters())
        rows.append([name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
                     round(sum(p.numel() * p.element_size() for p in params) / 2**20, 2)])
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    memory = sum(p.numel() * p.element_size() for p in list(params) + list(model.buffers())) / 2**20
    config = model.config.to_dict()
    keep = ("model_type", "architectures", "layer_type", "hidden_sizes", "depths", "embedding_size", "num_channels",
            "hidden_act", "id2label", "dtype")
    summary_config = {k: config[k] for k in keep if k in config}
    size = getattr(processor, "size", None)
    summary_config["image_processor"] = {"class": type(processor).__name__, "size": size,
                                         "image_mean": getattr(processor, "image_mean", None)}
    labels = ", ".join(str(v) for v in model.config.id2label.values())
    summary = (
        f"**{state.config.classifier}**: `{type(model).__name__}` ({config.get('layer_type', '')} ResNet, labels "
        f"{labels}): **{human(total)} parameters** ({total:,}; {trainable:,} trainable), **{memory:.1f} MB**."
    )
    table = pd.DataFrame(rows, columns=["block", "parameters", "trainable", "memory (MB)"])
    plot = _grouped_bars([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                         "Classifier parameters per block")
    return summary, table, plot, jsonable(summary_config)


def build(state: AppState) -> ModelsTab:
    p_summary, p_table, p_plot, p_configs, p_scheduler = pipeline_info(state)
    c_summary, c_table, c_plot, c_config = classifier_info(state)
    with gr.Row():
        gr.Markdown("### Diffusion pipeline")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100)
    summary = gr.Markdown(p_summary, elem_id="model-summary")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            table = gr.Dataframe(p_table, label="Components", interactive=False, wrap=True)
            with gr.Accordion("Component configs", open=False):
                configs = gr.JSON(p_configs, label="config.json of each component")
            with gr.Accordion("Scheduler", open=False):
                scheduler = gr.JSON(p_scheduler, label="Scheduler config")
        with gr.Column(scale=2):
            plot = gr.Plot(p_plot, label="Parameters per component", format="png", show_label=False)
    gr.Markdown("### Pneumonia classifier")
    c_summary_md = gr.Markdown(c_summary)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c_table_df = gr.Dataframe(c_table, label="Blocks", interactive=False)
            with gr.Accordion("Classifier config", open=False):
                c_config_json = gr.JSON(c_config, label="Classifier config")
        with gr.Column(scale=2):
            c_plot_out = gr.Plot(c_plot, label="Classifier parameters per block", format="png", show_label=False)

    def model_info():
        """The pipeline's and the classifier's components, parameter counts, memory, configs and plots."""
        return (*pipeline_info(state), *classifier_info(state))

    refresh.click(model_info, None, [summary, table, plot, configs, scheduler, c_summary_md, c_table_df, c_plot_out,
                                     c_config_json], api_name="model_info", concurrency_id="cpu_light")
    return ModelsTab(refresh)
