// One form for every method, drawn from its params JSON schema (titles, descriptions, defaults,
// ranges and choices all come from the server): a new method needs no UI code.
import type { FieldProblem } from "../api/client";

export interface Prop {
  type?: string;
  enum?: unknown[];
  anyOf?: Prop[];
  items?: Prop;
  default?: unknown;
  title?: string;
  description?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
}

/** What the inputs hold: text for numbers, lists and choices; booleans for checkboxes. */
export type Draft = Record<string, string | boolean>;

export interface Field {
  name: string;
  prop: Prop; // the non-null alternative of an ``anyOf [..., null]``
  nullable: boolean;
  kind: "boolean" | "enum" | "integer" | "number" | "list" | "text";
}

export function fieldsOf(schema: Record<string, unknown>): Field[] {
  const props = (schema["properties"] ?? {}) as Record<string, Prop>;
  return Object.entries(props).map(([name, raw]) => {
    const alternatives = raw.anyOf ?? [raw];
    const nullable = alternatives.some((a) => a.type === "null");
    const base = alternatives.find((a) => a.type !== "null") ?? raw;
    const prop = { ...base, title: raw.title, description: raw.description, default: raw.default };
    const kind = prop.enum
      ? "enum"
      : prop.type === "boolean"
        ? "boolean"
        : prop.type === "integer"
          ? "integer"
          : prop.type === "number"
            ? "number"
            : prop.type === "array"
              ? "list"
              : "text";
    return { name, prop, nullable, kind };
  });
}

function toText(value: unknown): string {
  if (value == null) return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

/** The inputs' contents for ``values`` (missing ones take the schema's defaults). */
export function draftOf(
  schema: Record<string, unknown>,
  values: Record<string, unknown> = {},
): Draft {
  const draft: Draft = {};
  for (const f of fieldsOf(schema)) {
    const value = f.name in values ? values[f.name] : f.prop.default;
    draft[f.name] = f.kind === "boolean" ? Boolean(value) : toText(value);
  }
  return draft;
}

function parseNumber(f: Field, text: string): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n)) throw new FieldError(f.name, "enter a number");
  if (f.kind === "integer" && !Number.isInteger(n))
    throw new FieldError(f.name, "enter a whole number");
  return n;
}

export class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** The params to send: typed values from the inputs (ranges are checked by the server). */
export function paramsOf(schema: Record<string, unknown>, draft: Draft): Record<string, unknown> {
  const params: Record<string, unknown> = {};
  for (const f of fieldsOf(schema)) {
    const v = draft[f.name];
    if (f.kind === "boolean") {
      params[f.name] = Boolean(v);
      continue;
    }
    const text = String(v ?? "");
    if (text.trim() === "" && f.nullable) {
      params[f.name] = null;
    } else if (f.kind === "enum") {
      params[f.name] = f.prop.enum!.find((option) => String(option) === text);
    } else if (f.kind === "integer" || f.kind === "number") {
      params[f.name] = parseNumber(f, text);
    } else if (f.kind === "list") {
      const items = text
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      const numeric = f.prop.items?.type === "integer" || f.prop.items?.type === "number";
      params[f.name] = numeric
        ? items.map((s) => parseNumber({ ...f, kind: f.prop.items!.type as "integer" }, s))
        : items;
    } else {
      params[f.name] = text;
    }
  }
  return params;
}

function rangeText(p: Prop): string {
  const low =
    p.exclusiveMinimum != null
      ? `> ${p.exclusiveMinimum}`
      : p.minimum != null
        ? `≥ ${p.minimum}`
        : "";
  const high =
    p.exclusiveMaximum != null
      ? `< ${p.exclusiveMaximum}`
      : p.maximum != null
        ? `≤ ${p.maximum}`
        : "";
  return [low, high].filter(Boolean).join(", ");
}

function helpText(f: Field): string {
  const parts = [f.prop.description ?? ""];
  const range = rangeText(f.kind === "list" ? (f.prop.items ?? {}) : f.prop);
  if (range) parts.push(`(${f.kind === "list" ? "each " : ""}${range})`);
  if (f.kind === "list") parts.push("Comma-separated.");
  if (f.nullable) parts.push("Empty: none.");
  parts.push(`Default: ${toText(f.prop.default) || "none"}.`);
  return parts.filter(Boolean).join(" ");
}

export function ParamsForm({
  schema,
  draft,
  onChange,
  problems,
  idPrefix,
  searched,
}: {
  schema: Record<string, unknown>;
  draft: Draft;
  onChange: (draft: Draft) => void;
  problems: FieldProblem[];
  idPrefix: string;
  /** A param an accuracy-target search varies: its input is off (the search's values win). */
  searched?: string;
}) {
  const set = (name: string, value: string | boolean) => onChange({ ...draft, [name]: value });
  return (
    <div class="params">
      {fieldsOf(schema).map((f) => {
        const id = `${idPrefix}-${f.name}`;
        const problem = problems.find(
          (p) => p.field === f.name || p.field.startsWith(`${f.name}.`),
        );
        const describedBy = `${id}-help${problem ? ` ${id}-error` : ""}`;
        const common = {
          id,
          name: f.name,
          "aria-describedby": describedBy,
          "aria-invalid": problem ? true : undefined,
          disabled: f.name === searched,
        };
        const label = f.prop.title ?? f.name;
        let input;
        if (f.kind === "boolean") {
          input = (
            <input
              {...common}
              type="checkbox"
              checked={Boolean(draft[f.name])}
              onChange={(e) => set(f.name, e.currentTarget.checked)}
            />
          );
        } else if (f.kind === "enum") {
          input = (
            <select
              {...common}
              value={String(draft[f.name])}
              onChange={(e) => set(f.name, e.currentTarget.value)}
            >
              {f.nullable && <option value="">none</option>}
              {f.prop.enum!.map((option) => (
                <option value={String(option)}>{String(option)}</option>
              ))}
            </select>
          );
        } else if (f.kind === "integer" || f.kind === "number") {
          input = (
            <input
              {...common}
              type="number"
              required={!f.nullable}
              min={f.prop.minimum ?? f.prop.exclusiveMinimum}
              max={f.prop.maximum ?? f.prop.exclusiveMaximum}
              step={f.kind === "integer" ? 1 : "any"}
              value={String(draft[f.name])}
              onInput={(e) => set(f.name, e.currentTarget.value)}
            />
          );
        } else {
          input = (
            <input
              {...common}
              type="text"
              value={String(draft[f.name])}
              onInput={(e) => set(f.name, e.currentTarget.value)}
            />
          );
        }
        return (
          <div class={`field field-${f.kind}`} key={f.name}>
            <label for={id}>
              {label} <code>{f.name}</code>
            </label>
            {input}
            <small id={`${id}-help`} class="help">
              {f.name === searched ? "Searched: the target's values replace it." : helpText(f)}
            </small>
            {problem && (
              <small id={`${id}-error`} class="error" role="alert">
                {problem.message}
              </small>
            )}
          </div>
        );
      })}
    </div>
  );
}
