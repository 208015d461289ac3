// Chart configurations of the job page: training curves and bits per layer.
import type { ChartConfiguration } from "chart.js";
import type { EpochPoint } from "./events";

const LOSS = ["#1f5fbf", "#7aa6e8"];
const ACC = ["#c2410c", "#f0a070"];

export function curvesConfig(points: EpochPoint[]): ChartConfiguration {
  const stages = new Set(points.map((p) => p.stage));
  const labels = points.map((p) =>
    stages.size > 1 ? `${p.stage} ${p.epoch}` : `epoch ${p.epoch}`,
  );
  const series = (key: string) => points.map((p) => (key in p.metrics ? p.metrics[key] : null));
  const has = (key: string) => points.some((p) => key in p.metrics);
  const lines = [
    { key: "train_loss", label: "training loss", color: LOSS[0], axis: "loss" },
    { key: "val_loss", label: "validation loss", color: LOSS[1], axis: "loss" },
    { key: "train_top1", label: "training top-1 (%)", color: ACC[0], axis: "acc" },
    { key: "val_top1", label: "validation top-1 (%)", color: ACC[1], axis: "acc" },
  ].filter((l) => has(l.key));
  return {
    type: "line",
    data: {
      labels,
      datasets: lines.map((l) => ({
        label: l.label,
        data: series(l.key),
        borderColor: l.color,
        backgroundColor: l.color,
        yAxisID: l.axis,
        spanGaps: true,
        pointRadius: points.length > 40 ? 0 : 3,
      })),
    },
    options: {
      interaction: { mode: "index", intersect: false },
      scales: {
        loss: { type: "linear", position: "left", title: { display: true, text: "loss" } },
        acc: {
          type: "linear",
          position: "right",
          title: { display: true, text: "top-1 (%)" },
          grid: { drawOnChartArea: false },
        },
      },
    },
  };
}

export function bitsConfig(layers: { name: string; bits: number }[]): ChartConfiguration {
  return {
    type: "bar",
    data: {
      labels: layers.map((l) => l.name),
      datasets: [
        { label: "bits per weight", data: layers.map((l) => l.bits), backgroundColor: "#1f5fbf" },
      ],
    },
    options: {
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, title: { display: true, text: "bits per weight" } } },
    },
  };
}
