// A new job: model, dataset and method(s), with each method's form drawn from its JSON schema.
// "Compare methods" launches one job per chosen method on the same model, data, seed and batch.
import { useEffect, useState } from "preact/hooks";
import { api, ApiFailure, call, type FieldProblem, type MethodPublic } from "../api/client";
import { type Draft, draftOf, FieldError, paramsOf, ParamsForm } from "../components/ParamsForm";
import { ErrorMessage, Section, useLoad } from "../components/ui";
import { navigate } from "../lib/router";
import { presetsFor } from "./presets";

function MethodParams({
  method,
  draft,
  onChange,
  problems,
}: {
  method: MethodPublic;
  draft: Draft;
  onChange: (d: Draft) => void;
  problems: FieldProblem[];
}) {
  const presets = presetsFor(method.name, method.params_schema, method.presets);
  return (
    <fieldset class="method-params" data-method={method.name}>
      <legend>
        {method.title} <code>{method.name}</code>
      </legend>
      <p class="help">
        {method.summary} <em>{method.paper}</em>
      </p>
      <div class="presets" role="group" aria-label={`${method.title} presets`}>
        <button
          type="button"
          class="secondary"
          onClick={() => onChange(draftOf(method.params_schema))}
        >
          Paper defaults
        </button>
        {presets.map((p) => (
          <button
            type="button"
            class="secondary"
            title={p.note}
            onClick={() => onChange(draftOf(method.params_schema, p.params))}
          >
            {p.label}
          </button>
        ))}
      </div>
      <ParamsForm
        schema={method.params_schema}
        draft={draft}
        onChange={onChange}
        problems={problems}
        idPrefix={`param-${method.name}`}
      />
    </fieldset>
  );
}

export function NewJobPage({ query }: { query: URLSearchParams }) {
  const models = useLoad(() =>
    call(api.GET("/api/v1/models", { params: { query: { limit: 500 } } })),
  );
  const datasets = useLoad(() => call(api.GET("/api/v1/datasets")));
  const methods = useLoad(() => call(api.GET("/api/v1/methods")));
  const [modelId, setModelId] = useState(query.get("model") ?? "");
  const [dataset, setDataset] = useState("");
  const [compare, setCompare] = useState(false);
  const [chosen, setChosen] = useState<string[]>([]);
  const [drafts, setDrafts] = useState<Record<string, Draft>>({});
  const [batchSize, setBatchSize] = useState("128");
  const [seed, setSeed] = useState("0");
  const [problems, setProblems] = useState<Record<string, FieldProblem[]>>({});
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!modelId && models.data?.items.length) setModelId(String(models.data.items[0].id));
  }, [models.data]);
  useEffect(() => {
    const first = datasets.data?.find((d) => d.available);
    if (!dataset && first)
      setDataset(first.id != null ? `upload:${first.id}` : `builtin:${first.name}`);
  }, [datasets.data]);
  useEffect(() => {
    if (methods.data && !chosen.length) setChosen([methods.data[0].name]);
  }, [methods.data]);

  const byName = new Map((methods.data ?? []).map((m) => [m.name, m]));
  const draftFor = (m: MethodPublic) => drafts[m.name] ?? draftOf(m.params_schema);

  function toggle(name: string, on: boolean) {
    setChosen((list) =>
      on ? [...list.filter((n) => n !== name), name] : list.filter((n) => n !== name),
    );
  }

  async function submit(e: Event) {
    e.preventDefault();
    setError(undefined);
    setProblems({});
    if (!chosen.length) return setError(new Error("Choose at least one method."));
    const [kind, ref] = dataset.split(/:(.*)/);
    const bodies = [];
    for (const name of chosen) {
      const m = byName.get(name)!;
      try {
        bodies.push({
          model_id: Number(modelId),
          method: name,
          params: paramsOf(m.params_schema, draftFor(m)),
          batch_size: Number(batchSize),
          seed: Number(seed),
          ...(kind === "upload" ? { dataset_id: Number(ref) } : { dataset: ref }),
        });
      } catch (err) {
        if (err instanceof FieldError) {
          setProblems({ [name]: [{ field: err.field, message: err.message }] });
          return setError(new Error(`${m.title}: ${err.field}: ${err.message}`));
        }
        throw err;
      }
    }
    setBusy(true);
    const ids: number[] = [];
    try {
      for (const body of bodies) {
        try {
          ids.push((await call(api.POST("/api/v1/jobs", { body }))).id);
        } catch (err) {
          if (err instanceof ApiFailure) setProblems({ [body.method]: err.fieldProblems() });
          throw err;
        }
      }
      if (ids.length === 1) navigate(`/jobs/${ids[0]}`);
      else navigate(`/compare?model=${modelId}&jobs=${ids.join(",")}`);
    } catch (err) {
      setError(
        ids.length
          ? new Error(`${String((err as Error).message)} (jobs ${ids.join(", ")} were started)`)
          : err,
      );
    } finally {
      setBusy(false);
    }
  }

  const loadError = models.error ?? datasets.error ?? methods.error;
  const requestProblem = (field: string) =>
    Object.values(problems)
      .flat()
      .find((p) => p.field === field)?.message;

  return (
    <>
      <h1>New job</h1>
      <ErrorMessage error={loadError} />
      {models.data && models.data.items.length === 0 && (
        <p>
          There is no model to quantize yet: <a href="/models">upload one</a>.
        </p>
      )}
      <form onSubmit={submit} aria-label="New job">
        <Section title="What to quantize">
          <div class="grid-form">
            <div class="field">
              <label for="job-model">Model</label>
              <select
                id="job-model"
                required
                value={modelId}
                onChange={(e) => setModelId(e.currentTarget.value)}
              >
                {models.data?.items.map((m) => (
                  <option value={String(m.id)}>
                    {m.id}: {m.name} ({m.arch}, {m.num_classes} classes)
                  </option>
                ))}
              </select>
            </div>
            <div class="field">
              <label for="job-dataset">Dataset</label>
              <select
                id="job-dataset"
                required
                value={dataset}
                onChange={(e) => setDataset(e.currentTarget.value)}
              >
                {datasets.data?.map((d) =>
                  d.id != null ? (
                    <option value={`upload:${d.id}`}>
                      upload {d.id}: {d.name}
                    </option>
                  ) : (
                    <option value={`builtin:${d.name}`} disabled={!d.available}>
                      {d.title || d.name}
                      {d.available ? "" : " (not on this server)"}
                    </option>
                  ),
                )}
              </select>
            </div>
            <div class="field">
              <label for="job-batch">Batch size (evaluation)</label>
              <input
                id="job-batch"
                type="number"
                min={1}
                max={4096}
                required
                value={batchSize}
                onInput={(e) => setBatchSize(e.currentTarget.value)}
              />
              {requestProblem("batch_size") && (
                <small class="error">{requestProblem("batch_size")}</small>
              )}
            </div>
            <div class="field">
              <label for="job-seed">Seed</label>
              <input
                id="job-seed"
                type="number"
                min={0}
                required
                value={seed}
                onInput={(e) => setSeed(e.currentTarget.value)}
              />
              {requestProblem("seed") && <small class="error">{requestProblem("seed")}</small>}
            </div>
          </div>
        </Section>
        <Section title="Method">
          <div class="field field-boolean">
            <label for="job-compare">
              Compare methods (one job per chosen method, same model, data and seed)
            </label>
            <input
              id="job-compare"
              type="checkbox"
              checked={compare}
              onChange={(e) => {
                setCompare(e.currentTarget.checked);
                if (!e.currentTarget.checked) setChosen((list) => list.slice(-1));
              }}
            />
          </div>
          {!compare && (
            <div class="field">
              <label for="job-method">Method</label>
              <select
                id="job-method"
                value={chosen[0] ?? ""}
                onChange={(e) => setChosen([e.currentTarget.value])}
              >
                {methods.data?.map((m) => (
                  <option value={m.name}>{m.title}</option>
                ))}
              </select>
            </div>
          )}
          {compare && (
            <fieldset class="checks">
              <legend>Methods to compare</legend>
              {methods.data?.map((m) => (
                <label>
                  <input
                    type="checkbox"
                    name="methods"
                    value={m.name}
                    checked={chosen.includes(m.name)}
                    onChange={(e) => toggle(m.name, e.currentTarget.checked)}
                  />{" "}
                  {m.title}
                </label>
              ))}
            </fieldset>
          )}
          {chosen.map((name) => {
            const m = byName.get(name);
            return (
              m && (
                <MethodParams
                  key={name}
                  method={m}
                  draft={draftFor(m)}
                  onChange={(d) => setDrafts((all) => ({ ...all, [name]: d }))}
                  problems={problems[name] ?? []}
                />
              )
            );
          })}
        </Section>
        <ErrorMessage error={error} />
        <button type="submit" disabled={busy || !modelId || !dataset}>
          {chosen.length > 1 ? `Start ${chosen.length} jobs` : "Start job"}
        </button>
      </form>
    </>
  );
}
