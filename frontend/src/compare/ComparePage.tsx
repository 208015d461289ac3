// Compare jobs on one model: a table, and accuracy against size with the float model and the
// Pareto front. A search's page links here with its children's ids.
import type { ChartConfiguration } from "chart.js";
import { useEffect, useMemo } from "preact/hooks";
import { api, call, type JobPublic } from "../api/client";
import { ChartCanvas } from "../components/ChartCanvas";
import { ErrorMessage, FINISHED, Section, StatusBadge, useLoad } from "../components/ui";
import { bytes, percent } from "../lib/format";
import { navigate } from "../lib/router";
import { paretoFront } from "./pareto";

// One colour per job (the first is the job page's blue); the float model is orange.
const JOB_COLOURS = ["#1f5fbf", "#7c3aed", "#0891b2", "#a16207", "#db2777", "#4b5563"];

function scatterConfig(jobs: JobPublic[], labelOf: (j: JobPublic) => string): ChartConfiguration {
  const done = jobs.filter((j) => j.result);
  const points = done.map((j) => ({
    x: j.result!.file_bytes / 1024,
    y: j.result!.top1,
    label: labelOf(j),
  }));
  const first = done[0]?.result;
  const float = first
    ? [{ x: first.float_bytes / 1024, y: first.float_top1, label: "float model" }]
    : [];
  const front = paretoFront([...points, ...float]);
  return {
    type: "scatter",
    data: {
      datasets: [
        ...points.map((p, i) => ({
          label: p.label,
          data: [p],
          backgroundColor: JOB_COLOURS[i % JOB_COLOURS.length],
          pointRadius: 6,
        })),
        {
          label: "float model",
          data: float,
          backgroundColor: "#c2410c",
          pointStyle: "triangle",
          pointRadius: 9,
        },
        {
          type: "line",
          label: "Pareto front",
          data: front,
          borderColor: "#15803d",
          backgroundColor: "#15803d",
          borderDash: [6, 4],
          pointRadius: 0,
          fill: false,
        },
      ],
    },
    options: {
      scales: {
        x: { type: "logarithmic", title: { display: true, text: "size (KiB, file)" } },
        y: { title: { display: true, text: "top-1 (%)" } },
      },
      plugins: {
        tooltip: {
          callbacks: {
            label: (ctx) => {
              const p = ctx.raw as { x: number; y: number; label?: string };
              return `${p.label ?? ""}: ${p.y.toFixed(2)} %, ${p.x.toFixed(1)} KiB`;
            },
          },
        },
      },
    },
  };
}

function summary(params: Record<string, unknown>, defaults: Record<string, unknown>): string {
  const changed = Object.entries(params).filter(
    ([k, v]) => JSON.stringify(v) !== JSON.stringify(defaults[k]),
  );
  return changed.length
    ? changed.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")
    : "defaults";
}

export function ComparePage({ query }: { query: URLSearchParams }) {
  const modelId = query.get("model") ?? "";
  const ids = (query.get("jobs") ?? "").split(",").filter(Boolean).map(Number);
  const models = useLoad(() =>
    call(api.GET("/api/v1/models", { params: { query: { limit: 500 } } })),
  );
  const methods = useLoad(() => call(api.GET("/api/v1/methods")));
  const jobs = useLoad(
    () =>
      modelId
        ? call(
            api.GET("/api/v1/jobs", {
              params: { query: { model_id: Number(modelId), limit: 500 } },
            }),
          )
        : Promise.resolve({ items: [], total: 0 }),
    [modelId],
  );
  const all = jobs.data?.items ?? [];
  const chosen = all.filter((j) => ids.includes(j.id)).sort((a, b) => a.id - b.id);
  const live = chosen.some((j) => !FINISHED.has(j.status));
  useEffect(() => {
    if (!live) return;
    const timer = setTimeout(jobs.reload, 2000);
    return () => clearTimeout(timer);
  }, [jobs.data]);
  const defaults = (method: string): Record<string, unknown> => {
    const schema = methods.data?.find((m) => m.name === method)?.params_schema;
    const props = (schema?.["properties"] ?? {}) as Record<string, { default?: unknown }>;
    return Object.fromEntries(Object.entries(props).map(([k, p]) => [k, p.default]));
  };
  // The settings tell apart the points of one method (a search's children differ only there).
  const labelOf = (j: JobPublic) =>
    `job ${j.id} (${j.method}: ${summary(j.params, defaults(j.method))})`;
  const config = useMemo(
    () => scatterConfig(chosen, labelOf),
    [jobs.data, methods.data, query.get("jobs")],
  );

  const go = (model: string, jobIds: number[]) =>
    navigate(`/compare?model=${model}${jobIds.length ? `&jobs=${jobIds.join(",")}` : ""}`, true);
  const float = chosen.find((j) => j.result)?.result;

  return (
    <>
      <h1>Compare</h1>
      <ErrorMessage error={models.error ?? jobs.error ?? methods.error} />
      <Section title="Jobs to compare">
        <div class="field">
          <label for="compare-model">Model</label>
          <select
            id="compare-model"
            value={modelId}
            onChange={(e) => go(e.currentTarget.value, [])}
          >
            <option value="">choose…</option>
            {models.data?.items.map((m) => (
              <option value={String(m.id)}>
                {m.id}: {m.name} ({m.arch})
              </option>
            ))}
          </select>
        </div>
        {modelId && all.length === 0 && <p>This model has no jobs yet.</p>}
        {all.length > 0 && (
          <fieldset class="checks">
            <legend>Jobs on this model</legend>
            {all.map((j) => (
              <label key={j.id}>
                <input
                  type="checkbox"
                  checked={ids.includes(j.id)}
                  onChange={(e) =>
                    go(
                      modelId,
                      e.currentTarget.checked ? [...ids, j.id] : ids.filter((i) => i !== j.id),
                    )
                  }
                />{" "}
                job {j.id} · {j.method} · {j.status}
                {j.target ? " · search" : j.parent_id != null ? ` · of search ${j.parent_id}` : ""}
              </label>
            ))}
          </fieldset>
        )}
      </Section>
      {chosen.length > 0 && (
        <Section title="Results">
          <div class="scroll">
            <table data-testid="compare-table">
              <thead>
                <tr>
                  <th scope="col">Job</th>
                  <th scope="col">Method</th>
                  <th scope="col">Settings</th>
                  <th scope="col">Status</th>
                  <th scope="col">Top-1</th>
                  <th scope="col">Δ top-1</th>
                  <th scope="col">Top-5</th>
                  <th scope="col">File size</th>
                  <th scope="col">Compression</th>
                  <th scope="col">Average bits</th>
                </tr>
              </thead>
              <tbody>
                {float && (
                  <tr class="float-row">
                    <td>float</td>
                    <td>—</td>
                    <td>the uploaded model</td>
                    <td>—</td>
                    <td class="num">{percent(float.float_top1)}</td>
                    <td class="num">—</td>
                    <td class="num">{percent(float.float_top5)}</td>
                    <td class="num">{bytes(float.float_bytes)}</td>
                    <td class="num">1×</td>
                    <td class="num">32</td>
                  </tr>
                )}
                {chosen.map((j) => (
                  <tr key={j.id} data-job={j.id}>
                    <td>
                      <a href={`/jobs/${j.id}`}>Job {j.id}</a>
                    </td>
                    <td>{j.method}</td>
                    <td>
                      <small>{summary(j.params, defaults(j.method))}</small>
                    </td>
                    <td>
                      <StatusBadge status={j.status} />
                    </td>
                    <td class="num">{percent(j.result?.top1)}</td>
                    <td class="num">
                      {j.result ? `${(j.result.top1 - j.result.float_top1).toFixed(2)} pts` : "—"}
                    </td>
                    <td class="num">{percent(j.result?.top5)}</td>
                    <td class="num">{bytes(j.result?.file_bytes)}</td>
                    <td class="num">
                      {j.result ? `${j.result.compression_ratio.toFixed(1)}×` : "—"}
                    </td>
                    <td class="num">{j.result ? j.result.average_bits.toFixed(2) : "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {chosen.some((j) => j.result) ? (
            <ChartCanvas
              config={config}
              label="Top-1 accuracy against file size: each job, the float model, and the Pareto front"
              testId="compare-chart"
            />
          ) : (
            <p class="help">The plot appears when a chosen job has finished.</p>
          )}
        </Section>
      )}
    </>
  );
}
