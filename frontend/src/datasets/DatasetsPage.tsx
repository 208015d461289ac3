// Datasets: the built-ins this server has, and .npz uploads.
import { useState } from "preact/hooks";
import { api, call, upload, type DatasetPublic } from "../api/client";
import { FileDrop } from "../components/FileDrop";
import { ErrorMessage, ProgressBar, Section, useLoad } from "../components/ui";
import { bytes, count, date, shortHash } from "../lib/format";

function UploadForm({ onDone }: { onDone: () => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState("");
  const [kind, setKind] = useState("");
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<unknown>();
  const [created, setCreated] = useState<DatasetPublic>();

  async function submit(e: Event) {
    e.preventDefault();
    if (!file) return setError(new Error("Choose an .npz file first."));
    const form = new FormData();
    form.append("file", file);
    if (name) form.append("name", name);
    if (kind) form.append("kind", kind);
    setError(undefined);
    setCreated(undefined);
    setProgress(0);
    try {
      setCreated(await upload("/api/v1/datasets", form, setProgress));
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setProgress(null);
    }
  }

  return (
    <form onSubmit={submit} class="grid-form" aria-label="Upload a dataset">
      <div class="field wide">
        <FileDrop
          id="dataset-file"
          label="Dataset file: .npz, or an ImageFolder archive (.zip, .tar, .tar.gz)"
          accept=".npz,.zip,.tar,.gz,.tgz"
          file={file}
          onFile={setFile}
          describedBy={error ? "dataset-error" : undefined}
          invalid={Boolean(error)}
        />
        <ErrorMessage error={error} id="dataset-error" />
      </div>
      <p class="help wide">
        An <code>.npz</code> holds the arrays <code>x_train</code>, <code>y_train</code>,{" "}
        <code>x_val</code> and <code>y_val</code>; an archive holds{" "}
        <code>train/&lt;class&gt;/&lt;image&gt;</code> and{" "}
        <code>val/&lt;class&gt;/&lt;image&gt;</code> (.png, .jpg, .bmp).
      </p>
      <div class="field">
        <label for="dataset-kind">Kind</label>
        <select id="dataset-kind" value={kind} onChange={(e) => setKind(e.currentTarget.value)}>
          <option value="">detect from the file</option>
          <option value="npz">.npz arrays</option>
          <option value="imagefolder">ImageFolder archive</option>
        </select>
      </div>
      <div class="field">
        <label for="dataset-name">Name (optional)</label>
        <input id="dataset-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </div>
      <div class="field wide">
        {progress !== null && <ProgressBar value={progress} label="Upload progress" />}
        {created && (
          <p class="ok" role="status">
            Dataset {created.id} ({created.name}) accepted: {count(created.num_train)} training and{" "}
            {count(created.num_val)} validation samples.
          </p>
        )}
        <button type="submit" disabled={progress !== null}>
          Upload dataset
        </button>
      </div>
    </form>
  );
}

export function DatasetsPage() {
  const datasets = useLoad(() => call(api.GET("/api/v1/datasets")));
  const [deleteError, setDeleteError] = useState<unknown>();
  const builtins = datasets.data?.filter((d) => d.kind === "builtin") ?? [];
  const uploads = datasets.data?.filter((d) => d.kind !== "builtin") ?? [];

  async function remove(d: DatasetPublic) {
    if (d.id == null || !confirm(`Delete dataset ${d.id} (${d.name})?`)) return;
    setDeleteError(undefined);
    try {
      await call(
        api.DELETE("/api/v1/datasets/{dataset_id}", { params: { path: { dataset_id: d.id } } }),
      );
      datasets.reload();
    } catch (err) {
      setDeleteError(err);
    }
  }

  const shape = (d: DatasetPublic) =>
    d.in_channels == null ? "—" : `${d.in_channels}×${d.input_height}×${d.input_width}`;

  return (
    <>
      <h1>Datasets</h1>
      <ErrorMessage error={datasets.error ?? deleteError} />
      <Section title="Built-in">
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Title</th>
                <th scope="col">On this server</th>
                <th scope="col">Classes</th>
                <th scope="col">Input</th>
                <th scope="col">Train / val samples</th>
                <th scope="col">Description</th>
              </tr>
            </thead>
            <tbody>
              {builtins.map((d) => (
                <tr key={d.name}>
                  <td>
                    <code>{d.name}</code>
                  </td>
                  <td>{d.title}</td>
                  <td>{d.available ? "yes" : "no (needs its files)"}</td>
                  <td class="num">{count(d.num_classes)}</td>
                  <td>{shape(d)}</td>
                  <td class="num">
                    {count(d.num_train)} / {count(d.num_val)}
                  </td>
                  <td>{d.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </Section>
      <Section title="Upload a dataset">
        <UploadForm onDone={datasets.reload} />
      </Section>
      <Section title="Your uploads">
        {uploads.length === 0 && <p>No uploads yet.</p>}
        {uploads.length > 0 && (
          <div class="scroll">
            <table>
              <thead>
                <tr>
                  <th scope="col">Id</th>
                  <th scope="col">Name</th>
                  <th scope="col">Kind</th>
                  <th scope="col">Classes</th>
                  <th scope="col">Input</th>
                  <th scope="col">Train / val samples</th>
                  <th scope="col">Size</th>
                  <th scope="col">sha256</th>
                  <th scope="col">Uploaded</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {uploads.map((d) => (
                  <tr key={d.id}>
                    <td>{d.id}</td>
                    <td>{d.name}</td>
                    <td>{d.kind}</td>
                    <td class="num">{count(d.num_classes)}</td>
                    <td>{shape(d)}</td>
                    <td class="num">
                      {count(d.num_train)} / {count(d.num_val)}
                    </td>
                    <td class="num">{bytes(d.size_bytes)}</td>
                    <td>{d.sha256 && <code title={d.sha256}>{shortHash(d.sha256)}</code>}</td>
                    <td>{date(d.created_at)}</td>
                    <td>
                      <button type="button" class="danger" onClick={() => remove(d)}>
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
