// A new job: model, dataset and method(s), with each method's form drawn from its JSON schema.
// "Compare methods" launches one job per chosen method on the same model, data, seed and batch.
// "Accuracy target" launches one search job: child jobs try the values of a method's size knob
// (and optionally of other methods' knobs) and the search reports the winner.
import { useState } from "preact/hooks";
import { api, ApiFailure, call, type FieldProblem, type MethodPublic } from "../api/client";
import { type Draft, draftOf, FieldError, paramsOf, ParamsForm } from "../components/ParamsForm";
import { ErrorMessage, Section, useLoad } from "../components/ui";
import { navigate } from "../lib/router";
import { presetsFor } from "./presets";
import { type ArmDraft, armDraft, buildTarget, placeProblems } from "./target";
import { NEW_TARGET, TargetFields, type TargetDraft } from "./TargetForm";

type Mode = "one" | "compare" | "target";

function MethodParams({
  method,
  draft,
  onChange,
  problems,
  searched,
}: {
  method: MethodPublic;
  draft: Draft;
  onChange: (d: Draft) => void;
  problems: FieldProblem[];
  searched?: string;
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
        searched={searched}
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
  const [pickedModel, setModelId] = useState(query.get("model") ?? "");
  const [pickedDataset, setDataset] = useState("");
  const [mode, setMode] = useState<Mode>(query.get("mode") === "target" ? "target" : "one");
  const [picked, setPicked] = useState<string[] | null>(null);
  const [drafts, setDrafts] = useState<Record<string, Draft>>({});
  const [batchSize, setBatchSize] = useState("128");
  const [seed, setSeed] = useState("0");
  const [deterministic, setDeterministic] = useState(false);
  const [knobs, setKnobs] = useState<Record<string, ArmDraft>>({});
  const [target, setTarget] = useState<TargetDraft>(NEW_TARGET);
  const [problems, setProblems] = useState<Record<string, FieldProblem[]>>({});
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  // Until the user picks, the first of each list. Derived in the render, not set by an effect:
  // effects run after the paint, and a choice made in between (a fast user, a browser test)
  // would be undone or raced.
  const firstModel = models.data?.items[0];
  const modelId = pickedModel || (firstModel ? String(firstModel.id) : "");
  const firstData = datasets.data?.find((d) => d.available);
  const dataset =
    pickedDataset ||
    (firstData
      ? firstData.id != null
        ? `upload:${firstData.id}`
        : `builtin:${firstData.name}`
      : "");
  const firstMethod = methods.data?.[0]?.name;
  const defaultChosen = firstMethod ? [firstMethod] : [];
  const chosen = picked ?? defaultChosen;
  const setChosen = (next: string[] | ((list: string[]) => string[])) =>
    setPicked((list) => (typeof next === "function" ? next(list ?? defaultChosen) : next));

  const byName = new Map((methods.data ?? []).map((m) => [m.name, m]));
  const draftFor = (m: MethodPublic) => drafts[m.name] ?? draftOf(m.params_schema);
  const compare = mode === "compare";
  const searching = mode === "target";
  const ownMethod = byName.get(chosen[0] ?? "");
  // The searched knob of the job's own method, kept per method while the user tries several.
  const own = ownMethod
    ? (knobs[ownMethod.name] ?? armDraft(ownMethod.name, ownMethod.params_schema))
    : { method: "", param: "", values: "" };
  const arms = searching ? [own, ...target.others] : [];
  /** The param a method's form shows as searched (the first row searching that method). */
  const searchedParam = (name: string) => arms.find((a) => a.method === name)?.param;
  /** The methods whose forms are shown: the chosen ones, or every method the search runs. */
  const shown = searching ? [...new Set(arms.map((a) => a.method))] : chosen;

  function changeMode(next: Mode) {
    setMode(next);
    if (next !== "compare") setChosen((list) => list.slice(-1));
    setProblems({});
    setError(undefined);
  }

  function toggle(name: string, on: boolean) {
    setChosen((list) =>
      on ? [...list.filter((n) => n !== name), name] : list.filter((n) => n !== name),
    );
  }

  const [kind, ref] = dataset.split(/:(.*)/);
  const common = () => ({
    model_id: Number(modelId),
    batch_size: Number(batchSize),
    seed: Number(seed),
    deterministic,
    ...(kind === "upload" ? { dataset_id: Number(ref) } : { dataset: ref }),
  });

  /** One search job; its page follows the search. */
  async function submitSearch() {
    const inputs = [];
    for (const arm of arms) {
      const m = byName.get(arm.method);
      if (!m) return setError(new Error(`Unknown method ${arm.method}.`));
      // The knob's own input is off: its default stands in (the search's values replace it).
      const draft = { ...draftFor(m), [arm.param]: draftOf(m.params_schema)[arm.param] };
      try {
        inputs.push({
          draft: arm,
          schema: m.params_schema,
          params: paramsOf(m.params_schema, draft),
        });
      } catch (err) {
        if (err instanceof FieldError) {
          setProblems({ [m.name]: [{ field: err.field, message: err.message }] });
          return setError(new Error(`${m.title}: ${err.field}: ${err.message}`));
        }
        throw err;
      }
    }
    let body;
    try {
      const built = buildTarget({
        goal: target.goal,
        limit: target.goal === "smallest_within" ? target.points : target.size,
        parallel: target.parallel,
        arms: inputs,
      });
      body = { ...common(), method: own.method, params: built.params, target: built.target };
    } catch (err) {
      if (err instanceof FieldError) {
        setProblems({ target: [{ field: err.field, message: err.message }] });
        return setError(new Error(`Target: ${err.message}`));
      }
      throw err;
    }
    setBusy(true);
    try {
      const job = await call(api.POST("/api/v1/jobs", { body }));
      navigate(`/jobs/${job.id}`);
    } catch (err) {
      if (err instanceof ApiFailure) {
        const named = err.details["field"];
        setProblems(
          placeProblems(
            arms,
            err.fieldProblems(),
            typeof named === "string" ? { field: named, message: err.message } : undefined,
          ),
        );
      }
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  async function submit(e: Event) {
    e.preventDefault();
    setError(undefined);
    setProblems({});
    if (!chosen.length) return setError(new Error("Choose at least one method."));
    if (searching) return submitSearch();
    const bodies = [];
    for (const name of chosen) {
      const m = byName.get(name)!;
      try {
        bodies.push({ ...common(), method: name, params: paramsOf(m.params_schema, draftFor(m)) });
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
            <label
              class="check"
              title="torch.use_deterministic_algorithms: on a GPU a re-run then reproduces the result exactly, a little slower"
            >
              <input
                type="checkbox"
                checked={deterministic}
                onChange={(e) => setDeterministic(e.currentTarget.checked)}
              />
              Deterministic algorithms (exact re-runs on a GPU)
            </label>
          </div>
        </Section>
        <Section title="Method">
          <fieldset class="checks modes">
            <legend>Mode</legend>
            <label>
              <input
                type="radio"
                name="mode"
                id="job-one"
                checked={mode === "one"}
                onChange={() => changeMode("one")}
              />{" "}
              One method
            </label>
            <label>
              <input
                type="radio"
                name="mode"
                id="job-compare"
                checked={mode === "compare"}
                onChange={() => changeMode("compare")}
              />{" "}
              Compare methods (one job per chosen method, same model, data and seed)
            </label>
            <label>
              <input
                type="radio"
                name="mode"
                id="job-target"
                checked={mode === "target"}
                onChange={() => changeMode("target")}
              />{" "}
              Accuracy target (search a size knob for the smallest or most accurate model)
            </label>
          </fieldset>
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
          {searching && methods.data && ownMethod && (
            <fieldset class="target" aria-describedby="target-help">
              <legend>Accuracy target</legend>
              <p id="target-help" class="help">
                One search job: child jobs run the knob's values (several at a time) until the
                answer is known; the search's page shows the winner, every run and the Pareto set.
              </p>
              <TargetFields
                methods={methods.data}
                own={own}
                onOwn={(arm) => {
                  setKnobs((all) => ({ ...all, [arm.method]: arm }));
                  setProblems((all) => ({ ...all, target: [] }));
                }}
                draft={target}
                onChange={(t) => {
                  setTarget(t);
                  setProblems((all) => ({ ...all, target: [] })); // edited: the old ones are stale
                }}
                problems={problems["target"] ?? []}
              />
            </fieldset>
          )}
          {shown.map((name) => {
            const m = byName.get(name);
            return (
              m && (
                <MethodParams
                  key={name}
                  method={m}
                  draft={draftFor(m)}
                  onChange={(d) => setDrafts((all) => ({ ...all, [name]: d }))}
                  problems={problems[name] ?? []}
                  searched={searching ? searchedParam(name) : undefined}
                />
              )
            );
          })}
        </Section>
        <ErrorMessage error={error} />
        <button type="submit" disabled={busy || !modelId || !dataset}>
          {searching
            ? "Start search"
            : chosen.length > 1
              ? `Start ${chosen.length} jobs`
              : "Start job"}
        </button>
      </form>
    </>
  );
}
