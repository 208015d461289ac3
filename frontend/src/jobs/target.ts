// Accuracy-target searches: the new-job form's pure logic (which params can be searched, their
// suggested values, parsing the user's lists and sizes, the request's `target`) and the reading
// of a search job's `target` (spec and outcome) for its page. No UI here, so all of it is tested.
import type { FieldProblem, JobPublic, Schemas } from "../api/client";
import { paretoFront } from "../compare/pareto";
import { type Field, FieldError, fieldsOf } from "../components/ParamsForm";

export type Goal = "smallest_within" | "most_accurate_under";
export type TargetSpec = Schemas["TargetSpec"];
export type TargetArm = Schemas["TargetArm"];

/** The API's own limits (api/schemas.py TargetSpec). */
export const MAX_VALUES = 32;
export const MAX_OTHER_METHODS = 3;
const MAX_PARALLEL = 16;

// ---------------------------------------------------------------------------------------------
// The form

/** What one searched method's row holds: the param (the size knob) and its values as typed. */
export interface ArmDraft {
  method: string;
  param: string;
  values: string;
}

/** The params a search can vary: whole numbers, numbers and choices (not flags, lists, text). */
export function knobFields(schema: Record<string, unknown>): Field[] {
  return fieldsOf(schema).filter(
    (f) => f.kind === "integer" || f.kind === "enum" || f.kind === "number",
  );
}

/** The knob offered first: a bit width or level count when the method has one (that is what
 * sets a quantized model's size), else its first choice or whole number. */
export function defaultKnob(schema: Record<string, unknown>): string | undefined {
  const fields = knobFields(schema);
  const sizeLike = (f: Field) => /bit|level/i.test(f.name);
  const pick =
    fields.find((f) => sizeLike(f) && f.kind !== "number") ??
    fields.find(sizeLike) ??
    fields.find((f) => f.kind === "enum") ??
    fields.find((f) => f.kind === "integer") ??
    fields[0];
  return pick?.name;
}

function lowerBound(f: Field): number | undefined {
  const p = f.prop;
  if (p.minimum != null) return p.minimum;
  if (p.exclusiveMinimum != null)
    return f.kind === "integer" ? p.exclusiveMinimum + 1 : p.exclusiveMinimum;
  return undefined;
}

function upperBound(f: Field): number | undefined {
  const p = f.prop;
  if (p.maximum != null) return p.maximum;
  if (p.exclusiveMaximum != null)
    return f.kind === "integer" ? p.exclusiveMaximum - 1 : p.exclusiveMaximum;
  return undefined;
}

/** Largest range filled in whole: beyond it the user picks the values. */
const SMALL_RANGE = 12;

/** Values to start from, ascending: every choice of a choice param, every whole number of a small
 * range (numbers start at 1: a zero-bit model is rarely what a search is after), else the
 * default alone. */
export function suggestedValues(f: Field): unknown[] {
  if (f.kind === "enum") return [...(f.prop.enum ?? [])];
  const min = lowerBound(f);
  const high = upperBound(f);
  // A number with a fractional default (a learning rate…) is a continuous setting, not a size.
  const stepped =
    f.kind === "integer" || f.prop.default == null || Number.isInteger(f.prop.default);
  if (min != null && high != null && stepped) {
    const low = f.kind === "integer" ? min : Math.max(1, Math.ceil(min));
    const count = Math.floor(high) - low + 1;
    if (count >= 2 && count <= SMALL_RANGE) return Array.from({ length: count }, (_, i) => low + i);
  }
  return f.prop.default == null ? [] : [f.prop.default];
}

export function valuesText(values: unknown[]): string {
  return values.map(String).join(", ");
}

/** A row for ``method``, searching ``param`` (default: the method's default knob). */
export function armDraft(
  method: string,
  schema: Record<string, unknown>,
  param?: string,
): ArmDraft {
  const name = param ?? defaultKnob(schema) ?? "";
  const field = knobFields(schema).find((f) => f.name === name);
  return { method, param: name, values: field ? valuesText(suggestedValues(field)) : "" };
}

/** The typed values of a comma-separated list; throws an Error that says what is wrong. */
export function parseValues(f: Field, text: string): unknown[] {
  const items = text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (!items.length) throw new Error("enter at least one value");
  if (items.length > MAX_VALUES) throw new Error(`at most ${MAX_VALUES} values`);
  const values = items.map((item) => {
    if (f.kind === "enum") {
      const option = f.prop.enum!.find((o) => String(o) === item);
      if (option === undefined) {
        throw new Error(`${item} is not one of ${f.prop.enum!.map(String).join(", ")}`);
      }
      return option;
    }
    const n = Number(item);
    if (!Number.isFinite(n)) throw new Error(`${item} is not a number`);
    if (f.kind === "integer" && !Number.isInteger(n))
      throw new Error(`${item} is not a whole number`);
    const p = f.prop;
    if (
      (p.minimum != null && n < p.minimum) ||
      (p.exclusiveMinimum != null && n <= p.exclusiveMinimum) ||
      (p.maximum != null && n > p.maximum) ||
      (p.exclusiveMaximum != null && n >= p.exclusiveMaximum)
    ) {
      throw new Error(`${item} is out of range`);
    }
    return n;
  });
  const seen = new Set<string>();
  for (const v of values) {
    if (seen.has(String(v))) throw new Error(`${String(v)} is listed twice`);
    seen.add(String(v));
  }
  return values;
}

// Decimal units are what storage vendors print, binary ones what this UI shows (KiB, MiB):
// both are accepted and mean what they say.
const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  byte: 1,
  bytes: 1,
  k: 1e3,
  kb: 1e3,
  kib: 2 ** 10,
  m: 1e6,
  mb: 1e6,
  mib: 2 ** 20,
  g: 1e9,
  gb: 1e9,
  gib: 2 ** 30,
};

/** Bytes from "40000", "40 KB", "39.1 KiB", "0.5 MB"…; throws an Error that says what is wrong. */
export function parseBytes(text: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)$/i);
  if (!m) throw new Error("enter a size such as 40000, 40 KB or 0.5 MiB");
  const unit = UNITS[m[2].toLowerCase()];
  if (unit == null) throw new Error(`unknown unit ${m[2]}: use B, KB, KiB, MB, MiB, GB or GiB`);
  const n = Math.round(Number(m[1]) * unit);
  if (!(n > 0)) throw new Error("the size must be more than 0 bytes");
  if (n > 1e15) throw new Error("the size is too large");
  return n;
}

/** The limit to send: top-1 points for smallest_within, bytes for most_accurate_under. */
export function parseLimit(goal: Goal, text: string): number {
  if (goal === "most_accurate_under") return parseBytes(text);
  const n = Number(text.trim());
  if (text.trim() === "" || !Number.isFinite(n)) throw new Error("enter a number of points");
  if (!(n > 0)) throw new Error("the allowed drop must be more than 0 points");
  if (n > 100) throw new Error("top-1 is a percentage: at most 100 points");
  return n;
}

/** One searched method as the form gives it: the row, the method's schema, and its other
 * params already read from its form. */
export interface ArmInput {
  draft: ArmDraft;
  schema: Record<string, unknown>;
  params: Record<string, unknown>;
}

/** Where the server reports a problem with arm ``index`` (0: the job's own method). */
export function armField(index: number, key: "method" | "param" | "values" | "params"): string {
  return index === 0 ? `target.${key}` : `target.other_methods.${index - 1}.${key}`;
}

/** ``read()``, its Error turned into a FieldError of ``field``. */
function under<T>(field: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    throw new FieldError(field, (err as Error).message);
  }
}

/** A problem's field in the dotted form the form uses: the server writes validation errors as
 * ``target.other_methods.0.values`` but a search's own checks as ``target.values[2]``. */
export function dottedField(field: string): string {
  return field.replace(/\[(\d+)\]/g, ".$1");
}

/** Where the form shows each problem the server found with a search request: under ``target``
 * those of the search's own inputs, under a method's name those of its params form. ``named`` is
 * the field the server blames as a whole (``details.field``), ``problems`` the detailed list. A
 * value of a knob the method refuses is named by the knob (each value is checked as a child's
 * params), so it goes beside that arm's values, not beside the knob's disabled input. */
export function placeProblems(
  arms: ArmDraft[],
  problems: FieldProblem[],
  named?: FieldProblem,
): Record<string, FieldProblem[]> {
  const placed: Record<string, FieldProblem[]> = { target: [] };
  const add = (key: string, p: FieldProblem) => (placed[key] ??= []).push(p);
  const where = named ? dottedField(named.field) : "";
  if (named && where) add("target", { field: where, message: named.message });
  const other = where.match(/^target\.other_methods\.(\d+)(\.|$)/);
  const blamed = other ? Number(other[1]) + 1 : 0;
  const arm = arms[blamed] ?? arms[0];
  for (const raw of problems) {
    const p = { ...raw, field: dottedField(raw.field) };
    if (p.field === where) continue; // the same problem as ``named``
    if (p.field.startsWith("target")) add("target", p);
    else if (arm && (p.field === arm.param || p.field.startsWith(`${arm.param}.`)))
      add("target", { field: armField(blamed, "values"), message: p.message });
    else if (arm) add(arm.method, p);
  }
  return placed;
}

/** The request's ``params`` and ``target``; throws a FieldError named as the server names the
 * same problem (``target.limit``, ``target.values``, ``target.other_methods.0.values``…). */
export function buildTarget(input: {
  goal: Goal;
  limit: string;
  parallel: string;
  arms: ArmInput[];
}): { params: Record<string, unknown>; target: TargetSpec } {
  const limit = under("target.limit", () => parseLimit(input.goal, input.limit));
  const parallel = Number(input.parallel);
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > MAX_PARALLEL) {
    throw new FieldError("target.parallel", `a whole number from 1 to ${MAX_PARALLEL}`);
  }
  if (input.arms.length === 0) throw new FieldError("target.param", "choose a method");
  if (input.arms.length > 1 + MAX_OTHER_METHODS) {
    throw new FieldError("target.other_methods", `at most ${MAX_OTHER_METHODS} other methods`);
  }
  const arms = input.arms.map((arm, i) => {
    const field = knobFields(arm.schema).find((f) => f.name === arm.draft.param);
    if (!field) {
      throw new FieldError(
        armField(i, "param"),
        `choose the param of ${arm.draft.method} to search`,
      );
    }
    const values = under(armField(i, "values"), () => parseValues(field, arm.draft.values));
    // The fixed params carry the knob too (they are validated as a job's params): its first
    // value, which every child then replaces with its own.
    const params = { ...arm.params, [field.name]: values[0] };
    return { method: arm.draft.method, param: field.name, values, params };
  });
  const [own, ...others] = arms;
  return {
    params: own.params,
    target: {
      goal: input.goal,
      limit,
      param: own.param,
      values: own.values,
      parallel,
      ...(others.length ? { other_methods: others } : {}),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// A search job's page

export interface ArmOutcome {
  method: string;
  param: string;
  winner_job_id: number | null;
  winner_value: unknown;
  runs: number;
}

export interface SearchOutcome {
  winner_job_id: number | null;
  winner_value: unknown;
  winner_method?: string | null;
  pareto_job_ids: number[];
  runs: number;
  message: string;
  arms?: ArmOutcome[];
}

/** One searched method: the job's own (first) or one of ``other_methods``. */
export interface SearchArm {
  method: string;
  param: string;
  values: unknown[];
}

export interface Search {
  goal: Goal;
  limit: number;
  parallel: number;
  arms: SearchArm[];
  /** Which arm and value each child tried, as the server records it (absent on old searches). */
  placed: Map<number, { arm: number; index: number }>;
  outcome: SearchOutcome | null;
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** The search a parent job runs, from its ``target`` (null for an ordinary job). */
export function searchOf(job: Pick<JobPublic, "method" | "target">): Search | null {
  const t = job.target;
  if (!isRecord(t)) return null;
  const others = Array.isArray(t["other_methods"]) ? t["other_methods"].filter(isRecord) : [];
  const arms: SearchArm[] = [
    { method: job.method, param: String(t["param"]), values: asList(t["values"]) },
    ...others.map((a) => ({
      method: String(a["method"]),
      param: String(a["param"]),
      values: asList(a["values"]),
    })),
  ];
  const placed = new Map<number, { arm: number; index: number }>();
  if (isRecord(t["children"])) {
    for (const [id, at] of Object.entries(t["children"])) {
      if (Array.isArray(at) && at.length === 2)
        placed.set(Number(id), { arm: Number(at[0]), index: Number(at[1]) });
    }
  }
  const o = t["outcome"];
  return {
    goal: t["goal"] === "most_accurate_under" ? "most_accurate_under" : "smallest_within",
    limit: Number(t["limit"]),
    parallel: Number(t["parallel"] ?? 1),
    arms,
    placed,
    outcome: isRecord(o)
      ? {
          winner_job_id: typeof o["winner_job_id"] === "number" ? o["winner_job_id"] : null,
          winner_value: o["winner_value"] ?? null,
          winner_method: typeof o["winner_method"] === "string" ? o["winner_method"] : null,
          pareto_job_ids: asList(o["pareto_job_ids"]).map(Number),
          runs: Number(o["runs"] ?? 0),
          message: String(o["message"] ?? ""),
          arms: Array.isArray(o["arms"]) ? (o["arms"].filter(isRecord) as never) : undefined,
        }
      : null,
  };
}

function asList(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

/** How many values the search may run, over all its methods. */
export function valueCount(search: Search): number {
  return search.arms.reduce((n, a) => n + a.values.length, 0);
}

/** Which arm a child ran and at which position of its values (-1, -1 when none matches): as the
 * server recorded it, else (an older search) found by the child's method and knob value. */
export function placeOf(
  search: Search,
  child: Pick<JobPublic, "id" | "method" | "params">,
): { arm: number; index: number } {
  const recorded = search.placed.get(child.id);
  if (recorded) return recorded;
  for (const [arm, a] of search.arms.entries()) {
    if (a.method !== child.method || !(a.param in child.params)) continue;
    const value = JSON.stringify(child.params[a.param]);
    const index = a.values.findIndex((v) => JSON.stringify(v) === value);
    if (index >= 0) return { arm, index };
  }
  return { arm: -1, index: -1 };
}

/** Children in the order the search lists them: by method, then smallest model first. */
export function orderChildren<T extends Pick<JobPublic, "id" | "method" | "params">>(
  search: Search,
  children: T[],
): T[] {
  const key = (c: T) => {
    const p = placeOf(search, c);
    return p.arm < 0 ? [search.arms.length, c.id] : [p.arm, p.index];
  };
  return [...children].sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    return x[0] - y[0] || x[1] - y[1] || a.id - b.id;
  });
}

/** "within 1 point of float" / "at most 40.0 KiB (40,960 bytes)". */
export function goalText(goal: Goal, limit: number, bytesText: (n: number) => string): string {
  if (goal === "smallest_within") {
    return `the smallest model within ${limit} point${limit === 1 ? "" : "s"} of the float model's top-1`;
  }
  return `the most accurate model of at most ${bytesText(limit)} (${limit.toLocaleString("en-US")} bytes, packed)`;
}

type Child = Pick<JobPublic, "id" | "status" | "result">;

/** Children run so far (succeeded), running or waiting, and the values the search may run. */
export function progressOf(
  search: Search,
  children: Child[],
): { run: number; pending: number; total: number } {
  const run = children.filter((c) => c.status === "succeeded").length;
  const pending = children.filter((c) => c.status === "queued" || c.status === "running").length;
  return { run, pending, total: valueCount(search) };
}

/** The Pareto set of the children: the outcome's once the search has ended, else the front of
 * the children finished so far (packed size against top-1, as the search measures them). */
export function paretoIds(search: Search, children: Child[]): Set<number> {
  if (search.outcome) return new Set(search.outcome.pareto_job_ids);
  const points = children
    .filter((c) => c.result)
    .map((c) => ({ id: c.id, x: c.result!.quantized_bytes, y: c.result!.top1 }));
  return new Set(paretoFront(points).map((p) => p.id));
}
