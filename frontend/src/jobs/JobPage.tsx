// One job: live stage and progress, training curves, before/after, per-layer table, downloads;
// or, for an accuracy-target search, its spec, children and outcome (SearchBody).
import { useEffect, useMemo, useState } from "preact/hooks";
import { api, call, type JobPublic, type ResultPublic } from "../api/client";
import { ChartCanvas } from "../components/ChartCanvas";
import {
  ErrorMessage,
  FINISHED,
  ProgressBar,
  Section,
  StatusBadge,
  useLoad,
} from "../components/ui";
import { bytes, date, memoryText, percent, seconds, shortHash } from "../lib/format";
import { navigate } from "../lib/router";
import { bitsConfig, curvesConfig } from "./charts";
import { useJobEvents } from "./events";
import { SearchBody } from "./SearchBody";
import { searchOf } from "./target";

interface Layer {
  name: string;
  shape: number[];
  num_weights: number;
  bits: number;
  levels: number;
  codebook: string;
  rel_error: number | null;
  total_bytes: number;
  file_bytes?: number;
}

function Cards({ r }: { r: ResultPublic }) {
  const cards: [string, string, string][] = [
    ["Top-1", percent(r.float_top1), percent(r.top1)],
    ["Top-5", percent(r.float_top5), percent(r.top5)],
    [
      "Size",
      bytes(r.float_bytes),
      `${bytes(r.file_bytes)} file (${bytes(r.quantized_bytes)} theory)`,
    ],
    ["Compression", "1×", `${r.compression_ratio.toFixed(1)}×`],
    ["Average bits", "32", r.average_bits.toFixed(2)],
  ];
  return (
    <div class="cards" data-testid="result-cards">
      {cards.map(([title, before, after]) => (
        <div class="stat">
          <h3>{title}</h3>
          <p>
            <span class="before">
              <span class="sr-only">before: </span>
              {before}
            </span>{" "}
            <span aria-hidden="true">→</span>{" "}
            <strong class="after">
              <span class="sr-only">after: </span>
              {after}
            </strong>
          </p>
        </div>
      ))}
      <div class="stat">
        <h3>Round-trip check</h3>
        <p>
          reloaded .qpack: <strong>{percent(r.artifact_top1)}</strong>
        </p>
      </div>
    </div>
  );
}

function Layers({ layers }: { layers: Layer[] }) {
  const config = useMemo(() => bitsConfig(layers), [layers]);
  return (
    <Section title="Per layer">
      <ChartCanvas
        config={config}
        label="Bits per weight of each quantized layer"
        testId="bits-chart"
      />
      <div class="scroll">
        <table data-testid="layers-table">
          <thead>
            <tr>
              <th scope="col">Layer</th>
              <th scope="col">Shape</th>
              <th scope="col">Weights</th>
              <th scope="col">Bits</th>
              <th scope="col">Levels</th>
              <th scope="col">Codebook</th>
              <th scope="col">Relative error</th>
              <th scope="col">Bytes (theory)</th>
              <th scope="col">Bytes in file</th>
            </tr>
          </thead>
          <tbody>
            {layers.map((l) => (
              <tr key={l.name}>
                <td>
                  <code>{l.name}</code>
                </td>
                <td>{l.shape.join("×")}</td>
                <td class="num">{l.num_weights.toLocaleString("en-US")}</td>
                <td class="num">{l.bits.toFixed(2)}</td>
                <td class="num">{l.levels}</td>
                <td>{l.codebook}</td>
                <td class="num">{l.rel_error == null ? "—" : l.rel_error.toFixed(4)}</td>
                <td class="num">{bytes(l.total_bytes)}</td>
                <td class="num">{l.file_bytes == null ? "—" : bytes(l.file_bytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Section>
  );
}

interface Speed {
  batch_size: number;
  latency_ms: number;
  throughput: number;
}

function Inference({ r }: { r: ResultPublic }) {
  const speeds = r.inference as Record<string, unknown>;
  const rows: [string, Speed][] = [];
  for (const name of ["float", "artifact"]) {
    const speed = speeds[name];
    if (speed && typeof speed === "object") rows.push([name, speed as Speed]);
  }
  if (!rows.length) return null;
  return (
    <Section title="Inference (measured)">
      <div class="scroll">
        <table data-testid="inference-table">
          <thead>
            <tr>
              <th scope="col">Model</th>
              <th scope="col">Batch</th>
              <th scope="col">Latency per batch</th>
              <th scope="col">Throughput</th>
            </tr>
          </thead>
          <tbody>
            {rows.map(([name, s]) => (
              <tr key={name}>
                <td>{name === "float" ? "float model" : "artifact (as load_artifact runs it)"}</td>
                <td class="num">{s.batch_size}</td>
                <td class="num">{s.latency_ms.toFixed(2)} ms</td>
                <td class="num">{s.throughput.toFixed(0)} inputs/s</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <p class="help">
        On {String(speeds.device ?? "the job's device")}: {String(speeds.note ?? "")}.
      </p>
    </Section>
  );
}

function Provenance({ r }: { r: ResultPublic }) {
  const p = r.provenance as Record<string, unknown>;
  if (!Object.keys(p).length) return null;
  return (
    <Section title="Reproducibility">
      <p class="help">
        Everything that produced this result; Re-run submits the same job again (on the CPU the
        re-run reproduces it exactly). ONNX export: {r.onnx_status}.
      </p>
      <pre class="params-json" data-testid="provenance">
        {JSON.stringify(p, null, 1)}
      </pre>
    </Section>
  );
}

function Downloads({ job }: { job: JobPublic }) {
  if (!job.artifacts?.length) return null;
  return (
    <Section title="Downloads">
      <ul class="downloads">
        {job.artifacts.map((a) => (
          <li key={a.id}>
            <a href={`/api/v1/artifacts/${a.id}`} download={a.filename} data-kind={a.kind}>
              {a.filename}
            </a>{" "}
            <span class="help">
              {a.kind}, {bytes(a.size_bytes)}, sha256{" "}
              <code title={a.sha256}>{shortHash(a.sha256)}</code>
            </span>
          </li>
        ))}
      </ul>
    </Section>
  );
}

/** An ordinary job's body: live progress, result, curves, layers, speed, downloads. */
function RunBody({ j, reload }: { j: JobPublic; reload: () => void }) {
  const stream = useJobEvents(j.id, reload);
  const curves = useMemo(() => curvesConfig(stream.epochs), [stream.epochs]);
  const started = stream.latest !== null;
  useEffect(() => {
    if (started && j.status === "queued") reload(); // a worker took it: status, device
  }, [started]);
  const finished = FINISHED.has(j.status);
  const stage = stream.latest?.stage ?? j.stage;
  const fraction = j.status === "succeeded" ? 1 : (stream.latest?.fraction ?? j.progress);
  return (
    <>
      <Section title="Progress">
        <p class="stage" data-testid="stage">
          {j.status === "queued" && !stage ? "waiting for a worker" : (stage ?? "—")}
        </p>
        <ProgressBar value={fraction} label="Job progress (current stage)" />
        {j.status === "failed" && (
          <div class="error" role="alert" data-testid="job-error">
            <strong>{j.error_code}</strong>: {j.error_message}
          </div>
        )}
        {j.status === "cancelled" && <p role="status">This job was cancelled.</p>}
      </Section>
      {j.result && (
        <Section title="Before → after">
          <Cards r={j.result} />
        </Section>
      )}
      <Section title="Training curves">
        {stream.epochs.length > 0 ? (
          <ChartCanvas config={curves} label="Loss and accuracy per epoch" testId="curves-chart" />
        ) : (
          <p class="help">
            {finished && stream.ended
              ? "This run trained no epochs (the method does not train), so there is no curve."
              : "The curve appears after the first training epoch."}
          </p>
        )}
      </Section>
      {j.result && <Layers layers={j.result.layers as unknown as Layer[]} />}
      {j.result && <Inference r={j.result} />}
      <Downloads job={j} />
      {j.result && <Provenance r={j.result} />}
      <Section title="Parameters">
        <pre class="params-json">{JSON.stringify(j.params, null, 1)}</pre>
        <p class="help">
          batch size {j.batch_size}, seed {j.seed}
        </p>
      </Section>
    </>
  );
}

export function JobPage({ id }: { id: number }) {
  const job = useLoad(
    () => call(api.GET("/api/v1/jobs/{job_id}", { params: { path: { job_id: id } } })),
    [id],
  );
  const [actionError, setActionError] = useState<unknown>();
  const j = job.data;
  const search = useMemo(() => (j ? searchOf(j) : null), [j]);

  async function cancel() {
    setActionError(undefined);
    try {
      await call(api.POST("/api/v1/jobs/{job_id}/cancel", { params: { path: { job_id: id } } }));
      job.reload();
    } catch (err) {
      setActionError(err);
    }
  }

  async function rerun() {
    setActionError(undefined);
    try {
      const again = await call(
        api.POST("/api/v1/jobs/{job_id}/rerun", { params: { path: { job_id: id } } }),
      );
      navigate(`/jobs/${again.id}`);
    } catch (err) {
      setActionError(err);
    }
  }

  async function remove() {
    const what = search ? `search job ${id} and all its child jobs` : `job ${id}`;
    if (!confirm(`Delete ${what} and their artifacts?`)) return;
    try {
      await call(api.DELETE("/api/v1/jobs/{job_id}", { params: { path: { job_id: id } } }));
      navigate("/jobs");
    } catch (err) {
      setActionError(err);
    }
  }

  if (job.error) return <ErrorMessage error={job.error} />;
  if (!j) return <p class="loading">Loading job {id}…</p>;
  const finished = FINISHED.has(j.status);
  const memory = memoryText(j.memory_estimate_bytes, j.peak_memory_bytes);
  const methods = search ? [...new Set(search.arms.map((a) => a.method))] : [j.method];

  return (
    <>
      <div class="title-row">
        <h1>
          {search ? "Search" : "Job"} {j.id} <StatusBadge status={j.status} />
        </h1>
        <div class="actions">
          {!finished && (
            <button type="button" class="danger" onClick={cancel} disabled={j.cancel_requested}>
              {j.cancel_requested ? "Cancelling…" : search ? "Cancel search" : "Cancel job"}
            </button>
          )}
          {/* A re-run repeats one job; a search is started again from the new-job form. */}
          {finished && !search && (
            <button type="button" class="secondary" onClick={rerun}>
              Re-run
            </button>
          )}
          {finished && (
            <button type="button" class="danger" onClick={remove}>
              {search ? "Delete search" : "Delete job"}
            </button>
          )}
          {!search && (
            <a class="button secondary" href={`/compare?model=${j.model_id}&jobs=${j.id}`}>
              Compare…
            </a>
          )}
        </div>
      </div>
      <p class="meta">
        {search && "Accuracy-target search · "}
        <a href={`/jobs?model=${j.model_id}`}>model {j.model_id}</a> ·{" "}
        <code>{methods.join(", ")}</code> ·{" "}
        {j.dataset_id != null ? `upload ${j.dataset_id}` : j.dataset} · created {date(j.created_at)}
        {j.device && ` · ${j.device}`}
        {j.wall_time_s != null && ` · ${seconds(j.wall_time_s)}`}
        {j.attempts > 1 && ` · attempt ${j.attempts}`}
        {j.parent_id != null && (
          <>
            {" "}
            · part of <a href={`/jobs/${j.parent_id}`}>search {j.parent_id}</a>
          </>
        )}
      </p>
      {memory && (
        <p class="meta" data-testid="memory">
          {memory}
        </p>
      )}
      <ErrorMessage error={actionError} />
      {search ? (
        <SearchBody j={j} search={search} reload={job.reload} />
      ) : (
        <RunBody j={j} reload={job.reload} />
      )}
    </>
  );
}
