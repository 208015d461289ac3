// Models: upload float weights for an architecture (validated by the server) and list them.
import { useState } from "preact/hooks";
import {
  api,
  ApiFailure,
  call,
  upload,
  type ArchitecturePublic,
  type ModelPublic,
} from "../api/client";
import { FileDrop } from "../components/FileDrop";
import { ErrorMessage, ProgressBar, Section, useLoad } from "../components/ui";
import { bytes, count, date, shortHash } from "../lib/format";

// openapi-fetch widens the tuple of the schema to an array.
type Arch = Omit<ArchitecturePublic, "default_input_size"> & { default_input_size: number[] };

type Field =
  "file" | "arch" | "num_classes" | "in_channels" | "input_height" | "input_width" | "name";

/** Which field a server error belongs to, so it is shown next to that field. */
function errorsByField(err: unknown): Partial<Record<Field, string>> {
  if (!(err instanceof ApiFailure)) return {};
  const out: Partial<Record<Field, string>> = {};
  for (const p of err.fieldProblems()) out[p.field as Field] = p.message;
  if (Object.keys(out).length) return out;
  if (err.code === "unknown_name") return { arch: err.message };
  if ("input_shape" in err.details) return { input_height: err.message };
  if (["invalid_model", "unsafe_model_file", "too_large"].includes(err.code))
    return { file: err.message };
  return {};
}

function UploadForm({ archs, onDone }: { archs: Arch[]; onDone: () => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [arch, setArch] = useState("");
  const [numClasses, setNumClasses] = useState("10");
  const [channels, setChannels] = useState("");
  const [height, setHeight] = useState("");
  const [width, setWidth] = useState("");
  const [name, setName] = useState("");
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<unknown>();
  const [created, setCreated] = useState<ModelPublic>();
  const chosen = archs.find((a) => a.name === arch);
  const fieldErrors = errorsByField(error);

  async function submit(e: Event) {
    e.preventDefault();
    if (!file) {
      setError(new ApiFailure(0, "no_file", "Choose a weights file first.", { field: "file" }));
      return;
    }
    const form = new FormData();
    form.append("file", file);
    form.append("arch", arch);
    form.append("num_classes", numClasses);
    if (channels) form.append("in_channels", channels);
    if (height) form.append("input_height", height);
    if (width) form.append("input_width", width);
    if (name) form.append("name", name);
    setError(undefined);
    setCreated(undefined);
    setProgress(0);
    try {
      setCreated(await upload("/api/v1/models", form, setProgress));
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setProgress(null);
    }
  }

  const fieldError = (f: Field) =>
    fieldErrors[f] && (
      <small class="error" id={`model-${f}-error`} role="alert">
        {fieldErrors[f]}
      </small>
    );
  const described = (f: Field) => (fieldErrors[f] ? `model-${f}-error` : undefined);
  const unplaced = error && !Object.keys(fieldErrors).length;

  return (
    <form onSubmit={submit} class="grid-form" aria-label="Upload a model">
      <div class="field wide">
        <FileDrop
          id="model-file"
          label="Weights (.safetensors or a torch state dict)"
          accept=".safetensors,.pt,.pth,.bin"
          file={file}
          onFile={setFile}
          describedBy={described("file")}
          invalid={Boolean(fieldErrors.file)}
        />
        {fieldError("file")}
      </div>
      <div class="field">
        <label for="model-arch">Architecture</label>
        <select
          id="model-arch"
          required
          value={arch}
          aria-describedby={described("arch")}
          onChange={(e) => setArch(e.currentTarget.value)}
        >
          <option value="">choose…</option>
          {archs.map((a) => (
            <option value={a.name}>{a.title}</option>
          ))}
        </select>
        {chosen && <small class="help">{chosen.description}</small>}
        {fieldError("arch")}
      </div>
      <div class="field">
        <label for="model-num_classes">Number of classes</label>
        <input
          id="model-num_classes"
          type="number"
          min={2}
          required
          value={numClasses}
          aria-describedby={described("num_classes")}
          onInput={(e) => setNumClasses(e.currentTarget.value)}
        />
        {fieldError("num_classes")}
      </div>
      <fieldset class="field">
        <legend>Input shape (empty: the architecture's default)</legend>
        <div class="inline">
          <label for="model-in_channels">Channels</label>
          <input
            id="model-in_channels"
            type="number"
            min={1}
            placeholder={chosen ? String(chosen.default_in_channels) : ""}
            value={channels}
            aria-describedby={described("in_channels")}
            onInput={(e) => setChannels(e.currentTarget.value)}
          />
          <label for="model-input_height">Height</label>
          <input
            id="model-input_height"
            type="number"
            min={1}
            placeholder={chosen ? String(chosen.default_input_size[0]) : ""}
            value={height}
            aria-describedby={described("input_height")}
            onInput={(e) => setHeight(e.currentTarget.value)}
          />
          <label for="model-input_width">Width</label>
          <input
            id="model-input_width"
            type="number"
            min={1}
            placeholder={chosen ? String(chosen.default_input_size[1]) : ""}
            value={width}
            aria-describedby={described("input_width")}
            onInput={(e) => setWidth(e.currentTarget.value)}
          />
        </div>
        {fieldError("in_channels")}
        {fieldError("input_height")}
        {fieldError("input_width")}
      </fieldset>
      <div class="field">
        <label for="model-name">Name (optional)</label>
        <input id="model-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        {fieldError("name")}
      </div>
      <div class="field wide">
        {progress !== null && <ProgressBar value={progress} label="Upload progress" />}
        {unplaced && <ErrorMessage error={error} />}
        {created && (
          <p class="ok" role="status">
            Model {created.id} ({created.name}) accepted: {count(created.num_params)} parameters.
          </p>
        )}
        <button type="submit" disabled={progress !== null}>
          Upload model
        </button>
      </div>
    </form>
  );
}

export function ModelsPage() {
  const archs = useLoad(() => call(api.GET("/api/v1/architectures")));
  const models = useLoad(() =>
    call(api.GET("/api/v1/models", { params: { query: { limit: 500 } } })),
  );
  const [deleteError, setDeleteError] = useState<unknown>();

  async function remove(m: ModelPublic) {
    if (!confirm(`Delete model ${m.id} (${m.name}) with its finished jobs and artifacts?`)) return;
    setDeleteError(undefined);
    try {
      await call(api.DELETE("/api/v1/models/{model_id}", { params: { path: { model_id: m.id } } }));
      models.reload();
    } catch (err) {
      setDeleteError(err);
    }
  }

  return (
    <>
      <h1>Models</h1>
      <Section title="Upload a model">
        <ErrorMessage error={archs.error} />
        {archs.data && <UploadForm archs={archs.data} onDone={models.reload} />}
      </Section>
      <Section title="Your models">
        <ErrorMessage error={models.error ?? deleteError} />
        {models.data && models.data.items.length === 0 && <p>No models yet: upload one above.</p>}
        {models.data && models.data.items.length > 0 && (
          <div class="scroll">
            <table>
              <thead>
                <tr>
                  <th scope="col">Id</th>
                  <th scope="col">Name</th>
                  <th scope="col">Architecture</th>
                  <th scope="col">Classes</th>
                  <th scope="col">Input</th>
                  <th scope="col">Parameters</th>
                  <th scope="col">Size</th>
                  <th scope="col">sha256</th>
                  <th scope="col">Uploaded</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {models.data.items.map((m) => (
                  <tr key={m.id}>
                    <td>{m.id}</td>
                    <td>{m.name}</td>
                    <td>{m.arch}</td>
                    <td>{m.num_classes}</td>
                    <td>
                      {m.in_channels}×{m.input_height}×{m.input_width}
                    </td>
                    <td class="num">{count(m.num_params)}</td>
                    <td class="num">{bytes(m.size_bytes)}</td>
                    <td>
                      <code title={m.sha256}>{shortHash(m.sha256)}</code>
                    </td>
                    <td>{date(m.created_at)}</td>
                    <td class="actions">
                      <a href={`/jobs/new?model=${m.id}`}>Quantize</a>
                      <a href={`/jobs?model=${m.id}`}>Jobs</a>
                      <button type="button" class="danger" onClick={() => remove(m)}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Section>
    </>
  );
}
