// The "Accuracy target" part of the new-job form: the goal and its limit, how many child jobs run
// at once, and one row per searched method (its size knob and the knob's values). The methods'
// other params come from their usual forms below it.
import type { FieldProblem, MethodPublic } from "../api/client";
import { bytes } from "../lib/format";
import {
  type ArmDraft,
  armDraft,
  armField,
  type Goal,
  knobFields,
  MAX_OTHER_METHODS,
  parseBytes,
} from "./target";

/** The target's inputs besides the job's own method's row. */
export interface TargetDraft {
  goal: Goal;
  points: string; // smallest_within: allowed top-1 drop
  size: string; // most_accurate_under: the budget as typed ("40 KB")
  parallel: string;
  others: ArmDraft[];
}

export const NEW_TARGET: TargetDraft = {
  goal: "smallest_within",
  points: "1",
  size: "",
  parallel: "2",
  others: [],
};

/** The problem reported for ``field`` or for one of its items (``target.values.2``). */
function problemAt(problems: FieldProblem[], field: string): string | undefined {
  return problems.find((p) => p.field === field || p.field.startsWith(`${field}.`))?.message;
}

function Problem({ id, text }: { id: string; text?: string }) {
  return text ? (
    <small id={id} class="error" role="alert">
      {text}
    </small>
  ) : null;
}

function ArmRow({
  index,
  arm,
  methods,
  onChange,
  onRemove,
  problems,
}: {
  index: number;
  arm: ArmDraft;
  methods: MethodPublic[];
  onChange: (arm: ArmDraft) => void;
  onRemove?: () => void;
  problems: FieldProblem[];
}) {
  const method = methods.find((m) => m.name === arm.method);
  const knobs = method ? knobFields(method.params_schema) : [];
  const knob = knobs.find((f) => f.name === arm.param);
  const id = `target-${index}`;
  const paramProblem = problemAt(problems, armField(index, "param"));
  const valuesProblem = problemAt(problems, armField(index, "values"));
  const methodProblem = problemAt(problems, armField(index, "method"));
  const paramsProblem = problemAt(problems, armField(index, "params"));
  const choices =
    knob?.kind === "enum" ? ` Choices: ${knob.prop.enum!.map(String).join(", ")}.` : "";
  return (
    <fieldset class="arm" data-arm={index}>
      <legend>{index === 0 ? `Searched: ${method?.title ?? arm.method}` : `Also search`}</legend>
      <div class="grid-form">
        {index > 0 && (
          <div class="field">
            <label for={`${id}-method`}>Method</label>
            <select
              id={`${id}-method`}
              value={arm.method}
              onChange={(e) => {
                const m = methods.find((x) => x.name === e.currentTarget.value);
                if (m) onChange(armDraft(m.name, m.params_schema));
              }}
            >
              {methods.map((m) => (
                <option value={m.name}>{m.title}</option>
              ))}
            </select>
            <Problem id={`${id}-method-error`} text={methodProblem} />
          </div>
        )}
        <div class="field">
          <label for={`${id}-param`}>Size knob (param to search)</label>
          <select
            id={`${id}-param`}
            value={arm.param}
            aria-invalid={paramProblem ? true : undefined}
            onChange={(e) =>
              method && onChange(armDraft(arm.method, method.params_schema, e.currentTarget.value))
            }
          >
            {knobs.map((f) => (
              <option value={f.name}>
                {f.prop.title ?? f.name} ({f.name})
              </option>
            ))}
          </select>
          {knobs.length === 0 && (
            <small class="error">{arm.method} has no numeric or choice param to search.</small>
          )}
          <Problem id={`${id}-param-error`} text={paramProblem} />
        </div>
        <div class="field wide">
          <label for={`${id}-values`}>Values, smallest model first</label>
          <input
            id={`${id}-values`}
            type="text"
            value={arm.values}
            aria-describedby={`${id}-values-help${valuesProblem ? ` ${id}-values-error` : ""}`}
            aria-invalid={valuesProblem ? true : undefined}
            onInput={(e) => onChange({ ...arm, values: e.currentTarget.value })}
          />
          <small id={`${id}-values-help`} class="help">
            Comma-separated. The search assumes accuracy grows along this order and runs only the
            values it needs.{choices}
          </small>
          <Problem id={`${id}-values-error`} text={valuesProblem} />
        </div>
      </div>
      <Problem id={`${id}-params-error`} text={paramsProblem} />
      {onRemove && (
        <button type="button" class="secondary" onClick={onRemove}>
          Remove {method?.title ?? arm.method}
        </button>
      )}
    </fieldset>
  );
}

/** The size budget as read so far: its bytes, or why it cannot be read. */
function sizeNote(text: string): { ok: boolean; text: string } {
  if (!text.trim()) return { ok: true, text: "Bytes when no unit; KB = 1000 bytes, KiB = 1024." };
  try {
    const n = parseBytes(text);
    return { ok: true, text: `= ${n.toLocaleString("en-US")} bytes (${bytes(n)})` };
  } catch (err) {
    return { ok: false, text: (err as Error).message };
  }
}

export function TargetFields({
  methods,
  own,
  onOwn,
  draft,
  onChange,
  problems,
}: {
  methods: MethodPublic[];
  own: ArmDraft;
  onOwn: (arm: ArmDraft) => void;
  draft: TargetDraft;
  onChange: (draft: TargetDraft) => void;
  problems: FieldProblem[];
}) {
  const set = (part: Partial<TargetDraft>) => onChange({ ...draft, ...part });
  const limitProblem = problemAt(problems, "target.limit");
  const parallelProblem = problemAt(problems, "target.parallel");
  const size = sizeNote(draft.size);
  const setOther = (i: number, arm: ArmDraft) =>
    set({ others: draft.others.map((a, j) => (j === i ? arm : a)) });
  function addOther() {
    // The first method not searched yet (any, when all are).
    const used = new Set([own.method, ...draft.others.map((a) => a.method)]);
    const m = methods.find((x) => !used.has(x.name)) ?? methods[0];
    if (m) set({ others: [...draft.others, armDraft(m.name, m.params_schema)] });
  }
  return (
    <>
      <div class="grid-form">
        <div class="field">
          <label for="target-goal">Goal</label>
          <select
            id="target-goal"
            value={draft.goal}
            onChange={(e) => set({ goal: e.currentTarget.value as Goal })}
          >
            <option value="smallest_within">Smallest model within a top-1 drop</option>
            <option value="most_accurate_under">Most accurate model under a size</option>
          </select>
        </div>
        {draft.goal === "smallest_within" ? (
          <div class="field">
            <label for="target-limit">Allowed top-1 drop (points below the float model)</label>
            <input
              id="target-limit"
              type="number"
              min={0}
              max={100}
              step="any"
              required
              value={draft.points}
              aria-invalid={limitProblem ? true : undefined}
              onInput={(e) => set({ points: e.currentTarget.value })}
            />
            <Problem id="target-limit-error" text={limitProblem} />
          </div>
        ) : (
          <div class="field">
            <label for="target-limit">Size budget (packed weights, e.g. 40 KB or 0.5 MiB)</label>
            <input
              id="target-limit"
              type="text"
              required
              value={draft.size}
              aria-describedby="target-limit-help"
              aria-invalid={limitProblem || !size.ok ? true : undefined}
              onInput={(e) => set({ size: e.currentTarget.value })}
            />
            <small id="target-limit-help" class={size.ok ? "help" : "error"}>
              {size.text}
            </small>
            <Problem id="target-limit-error" text={limitProblem} />
          </div>
        )}
        <div class="field">
          <label for="target-parallel">Child jobs at once</label>
          <input
            id="target-parallel"
            type="number"
            min={1}
            max={16}
            step={1}
            required
            value={draft.parallel}
            aria-invalid={parallelProblem ? true : undefined}
            onInput={(e) => set({ parallel: e.currentTarget.value })}
          />
          <Problem id="target-parallel-error" text={parallelProblem} />
        </div>
      </div>
      <ArmRow index={0} arm={own} methods={methods} onChange={onOwn} problems={problems} />
      {draft.others.map((arm, i) => (
        <ArmRow
          key={i}
          index={i + 1}
          arm={arm}
          methods={methods}
          onChange={(a) => setOther(i, a)}
          onRemove={() => set({ others: draft.others.filter((_, j) => j !== i) })}
          problems={problems}
        />
      ))}
      <Problem
        id="target-others-error"
        text={problems.find((p) => p.field === "target.other_methods")?.message}
      />
      <button
        type="button"
        class="secondary"
        onClick={addOther}
        disabled={draft.others.length >= MAX_OTHER_METHODS}
      >
        Add another method
      </button>
    </>
  );
}
