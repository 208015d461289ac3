// An accuracy-target search's page body: what it searches, how far it has got, its answer, and
// its child jobs (ordinary jobs, each with its own page). The search itself runs nothing, so it
// has no result, curves or downloads of its own. Its progress is the children's: they are
// polled until every one has ended (the search's own event stream carries nothing).
import { useEffect } from "preact/hooks";
import { api, call, type JobPublic } from "../api/client";
import {
  ErrorMessage,
  FINISHED,
  ProgressBar,
  Section,
  StatusBadge,
  useLoad,
} from "../components/ui";
import { bytes, percent } from "../lib/format";
import {
  goalText,
  orderChildren,
  paretoIds,
  placeOf,
  progressOf,
  type Search,
  valuesText,
} from "./target";

const POLL_MS = 1500;

function Spec({ search }: { search: Search }) {
  return (
    <Section title="Target">
      <p data-testid="search-goal">
        Find {goalText(search.goal, search.limit, bytes)}, running up to {search.parallel} child job
        {search.parallel === 1 ? "" : "s"} at once.
      </p>
      <div class="scroll">
        <table data-testid="search-spec">
          <thead>
            <tr>
              <th scope="col">Method</th>
              <th scope="col">Size knob</th>
              <th scope="col">Values (smallest model first)</th>
            </tr>
          </thead>
          <tbody>
            {search.arms.map((a, i) => (
              <tr key={i}>
                <td>
                  <code>{a.method}</code>
                </td>
                <td>
                  <code>{a.param}</code>
                </td>
                <td>{valuesText(a.values)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Section>
  );
}

function knobOf(search: Search, child: JobPublic): string {
  const { arm } = placeOf(search, child);
  if (arm < 0) return "—";
  const param = search.arms[arm].param;
  return `${param} = ${JSON.stringify(child.params[param])}`;
}

function Outcome({ j, search, children }: { j: JobPublic; search: Search; children: JobPublic[] }) {
  const o = search.outcome;
  if (!o) {
    return (
      <Section title="Answer">
        <p class="help">
          {j.status === "failed" || j.status === "cancelled"
            ? "The search ended without an answer."
            : "The answer appears when the search ends."}
        </p>
      </Section>
    );
  }
  const winner = children.find((c) => c.id === o.winner_job_id);
  const r = winner?.result;
  const perArm = (o.arms ?? []).length > 1 ? o.arms! : [];
  return (
    <Section title="Answer">
      {o.winner_job_id == null ? (
        <p role="status" data-testid="search-winner">
          No model meets the target: {o.message || "no value meets it"} ({o.runs} run
          {o.runs === 1 ? "" : "s"}).
        </p>
      ) : (
        <p role="status" data-testid="search-winner">
          Winner: <a href={`/jobs/${o.winner_job_id}`}>job {o.winner_job_id}</a>,{" "}
          <code>{o.winner_method ?? winner?.method ?? j.method}</code> with{" "}
          {winner ? knobOf(search, winner) : `value ${JSON.stringify(o.winner_value)}`}
          {r && (
            <>
              : top-1 {percent(r.top1)} ({(r.top1 - r.float_top1).toFixed(2)} points from the float
              model's {percent(r.float_top1)}), {bytes(r.quantized_bytes)} packed (
              {bytes(r.file_bytes)} file)
            </>
          )}
          . Found after {o.runs} run{o.runs === 1 ? "" : "s"}.
        </p>
      )}
      {perArm.length > 0 && (
        <ul data-testid="search-arms">
          {perArm.map((a) => (
            <li>
              <code>{a.method}</code> over <code>{a.param}</code>:{" "}
              {a.winner_job_id == null ? (
                "nothing meets the target"
              ) : (
                <>
                  best <a href={`/jobs/${a.winner_job_id}`}>job {a.winner_job_id}</a> ({a.param} ={" "}
                  {JSON.stringify(a.winner_value)})
                </>
              )}
              , {a.runs} run{a.runs === 1 ? "" : "s"}
            </li>
          ))}
        </ul>
      )}
    </Section>
  );
}

function Children({
  j,
  search,
  children,
}: {
  j: JobPublic;
  search: Search;
  children: JobPublic[];
}) {
  const ordered = orderChildren(search, children);
  const front = paretoIds(search, children);
  const winnerId = search.outcome?.winner_job_id;
  const float = children.find((c) => c.result)?.result;
  return (
    <Section title="Child jobs">
      {children.length === 0 ? (
        <p class="help">No child job has been started yet.</p>
      ) : (
        <>
          <p class="actions">
            <a
              class="button secondary"
              href={`/compare?model=${j.model_id}&jobs=${ordered.map((c) => c.id).join(",")}`}
            >
              Compare children
            </a>
            <span class="help">
              Pareto set: the runs no other run beats on both packed size and top-1
              {search.outcome ? "" : " (so far)"}.
            </span>
          </p>
          <div class="scroll">
            <table data-testid="children-table">
              <thead>
                <tr>
                  <th scope="col">Job</th>
                  <th scope="col">Method</th>
                  <th scope="col">Knob</th>
                  <th scope="col">Status</th>
                  <th scope="col">Top-1</th>
                  <th scope="col">Δ top-1</th>
                  <th scope="col">Packed size</th>
                  <th scope="col">File size</th>
                  <th scope="col">Pareto</th>
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
                    <td class="num">{bytes(float.float_bytes)}</td>
                    <td class="num">—</td>
                    <td>—</td>
                  </tr>
                )}
                {ordered.map((c) => {
                  const r = c.result;
                  const won = c.id === winnerId;
                  return (
                    <tr
                      key={c.id}
                      data-job={c.id}
                      class={won ? "winner" : undefined}
                      data-pareto={front.has(c.id) ? "yes" : undefined}
                    >
                      <td>
                        <a href={`/jobs/${c.id}`}>Job {c.id}</a>
                        {won && <strong class="winner-tag"> winner</strong>}
                      </td>
                      <td>
                        <code>{c.method}</code>
                      </td>
                      <td>
                        <code>{knobOf(search, c)}</code>
                      </td>
                      <td>
                        <StatusBadge status={c.status} />
                      </td>
                      <td class="num">{percent(r?.top1)}</td>
                      <td class="num">{r ? `${(r.top1 - r.float_top1).toFixed(2)} pts` : "—"}</td>
                      <td class="num">{bytes(r?.quantized_bytes)}</td>
                      <td class="num">{bytes(r?.file_bytes)}</td>
                      <td>{front.has(c.id) ? "✓ on the front" : ""}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </>
      )}
    </Section>
  );
}

export function SearchBody({
  j,
  search,
  reload,
}: {
  j: JobPublic;
  search: Search;
  reload: () => void;
}) {
  const kids = useLoad(
    () => call(api.GET("/api/v1/jobs", { params: { query: { parent_id: j.id, limit: 500 } } })),
    [j.id],
  );
  const children = kids.data?.items ?? [];
  const live =
    !FINISHED.has(j.status) || !kids.data || children.some((c) => !FINISHED.has(c.status));
  useEffect(() => {
    if (!live) return;
    const timer = setTimeout(() => {
      reload();
      kids.reload();
    }, POLL_MS);
    return () => clearTimeout(timer);
  }, [j, kids.data]);

  const { run, pending, total } = progressOf(search, children);
  // The knob's entry in the params is only a placeholder (each child sets its own value).
  const fixed = Object.fromEntries(
    Object.entries(j.params).filter(([k]) => k !== search.arms[0].param),
  );
  const fraction = j.status === "succeeded" ? 1 : total ? run / total : 0;
  return (
    <>
      <Section title="Progress">
        <p class="stage" data-testid="search-progress">
          {run} of {total} value{total === 1 ? "" : "s"} run
          {pending > 0 && ` · ${pending} running or queued`}
          {j.status === "succeeded" && run < total && " · the rest were not needed"}
        </p>
        <ProgressBar value={fraction} label="Search progress" />
        {j.status === "failed" && (
          <div class="error" role="alert" data-testid="job-error">
            <strong>{j.error_code}</strong>: {j.error_message}
          </div>
        )}
        {j.status === "cancelled" && (
          <p role="status">This search was cancelled, and its child jobs with it.</p>
        )}
        <ErrorMessage error={kids.error} />
      </Section>
      <Outcome j={j} search={search} children={children} />
      <Children j={j} search={search} children={children} />
      <Spec search={search} />
      <Section title="Fixed parameters">
        <pre class="params-json">{JSON.stringify(fixed, null, 1)}</pre>
        <p class="help">
          {search.arms[0].method}'s params besides the searched {search.arms[0].param}; batch size{" "}
          {j.batch_size}, seed {j.seed}
        </p>
      </Section>
    </>
  );
}
