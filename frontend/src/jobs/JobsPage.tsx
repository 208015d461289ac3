// Jobs: status badges, live progress (refreshed while any job is unfinished), filters, and a
// selection to compare.
import { useEffect, useState } from "preact/hooks";
import { api, call, type JobPublic } from "../api/client";
import { ErrorMessage, FINISHED, ProgressBar, StatusBadge, useLoad } from "../components/ui";
import { date, percent } from "../lib/format";
import { navigate } from "../lib/router";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"] as const;
type Status = (typeof STATUSES)[number];

export function JobsPage() {
  const initial = new URLSearchParams(location.search);
  const [status, setStatus] = useState(initial.get("status") ?? "");
  const [method, setMethod] = useState(initial.get("method") ?? "");
  const [model, setModel] = useState(initial.get("model") ?? "");
  const [selected, setSelected] = useState<number[]>([]);
  const methods = useLoad(() => call(api.GET("/api/v1/methods")));
  const models = useLoad(() =>
    call(api.GET("/api/v1/models", { params: { query: { limit: 500 } } })),
  );
  const jobs = useLoad(
    () =>
      call(
        api.GET("/api/v1/jobs", {
          params: {
            query: {
              status: (status || undefined) as Status | undefined,
              method: method || undefined,
              model_id: model ? Number(model) : undefined,
              limit: 200,
            },
          },
        }),
      ),
    [status, method, model],
  );

  const live = jobs.data?.items.some((j) => !FINISHED.has(j.status));
  useEffect(() => {
    if (!live) return;
    const timer = setInterval(jobs.reload, 1500);
    return () => clearInterval(timer);
  }, [live, jobs.reload]);

  useEffect(() => {
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (method) q.set("method", method);
    if (model) q.set("model", model);
    const search = q.toString();
    history.replaceState(null, "", `/jobs${search ? `?${search}` : ""}`);
  }, [status, method, model]);

  const modelName = new Map((models.data?.items ?? []).map((m) => [m.id, `${m.id}: ${m.name}`]));
  const chosenJobs = (jobs.data?.items ?? []).filter((j) => selected.includes(j.id));
  const sameModel = new Set(chosenJobs.map((j) => j.model_id)).size === 1;

  function toggle(job: JobPublic, on: boolean) {
    setSelected((ids) => (on ? [...ids, job.id] : ids.filter((id) => id !== job.id)));
  }

  return (
    <>
      <h1>Jobs</h1>
      <div class="toolbar">
        <form class="filters" aria-label="Filter jobs" onSubmit={(e) => e.preventDefault()}>
          <label for="filter-status">Status</label>
          <select
            id="filter-status"
            value={status}
            onChange={(e) => setStatus(e.currentTarget.value)}
          >
            <option value="">all</option>
            {STATUSES.map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
          <label for="filter-method">Method</label>
          <select
            id="filter-method"
            value={method}
            onChange={(e) => setMethod(e.currentTarget.value)}
          >
            <option value="">all</option>
            {methods.data?.map((m) => (
              <option value={m.name}>{m.title}</option>
            ))}
          </select>
          <label for="filter-model">Model</label>
          <select id="filter-model" value={model} onChange={(e) => setModel(e.currentTarget.value)}>
            <option value="">all</option>
            {models.data?.items.map((m) => (
              <option value={String(m.id)}>{modelName.get(m.id)}</option>
            ))}
          </select>
        </form>
        <div class="toolbar-actions">
          <button
            type="button"
            disabled={chosenJobs.length < 2 || !sameModel}
            title={sameModel ? "" : "Compare jobs on the same model"}
            onClick={() =>
              navigate(`/compare?model=${chosenJobs[0].model_id}&jobs=${selected.join(",")}`)
            }
          >
            Compare selected ({chosenJobs.length})
          </button>
          <a class="button" href="/jobs/new">
            New job
          </a>
        </div>
      </div>
      {chosenJobs.length > 1 && !sameModel && (
        <p class="error" role="status">
          The selected jobs use different models: compare jobs on one model.
        </p>
      )}
      <ErrorMessage error={jobs.error} />
      {jobs.data && jobs.data.items.length === 0 && (
        <p>
          No jobs{status || method || model ? " match these filters" : " yet"}.{" "}
          <a href="/jobs/new">Start one</a>.
        </p>
      )}
      {jobs.data && jobs.data.items.length > 0 && (
        <div class="scroll card">
          <table class="jobs">
            <thead>
              <tr>
                <th scope="col">
                  <span class="sr-only">Select</span>
                </th>
                <th scope="col">Job</th>
                <th scope="col">Model</th>
                <th scope="col">Method</th>
                <th scope="col">Dataset</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">Top-1 after</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {jobs.data.items.map((j) => (
                <tr key={j.id} data-job={j.id}>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`Select job ${j.id}`}
                      checked={selected.includes(j.id)}
                      onChange={(e) => toggle(j, e.currentTarget.checked)}
                    />
                  </td>
                  <td>
                    <a href={`/jobs/${j.id}`}>
                      {j.target ? "Search" : "Job"} {j.id}
                    </a>
                    {j.target && (
                      <small class="help" data-testid="job-search">
                        {" "}
                        over {String(j.target.param)}
                      </small>
                    )}
                    {j.parent_id != null && (
                      <small class="help" data-testid="job-parent">
                        {" "}
                        of <a href={`/jobs/${j.parent_id}`}>search {j.parent_id}</a>
                      </small>
                    )}
                  </td>
                  <td>{modelName.get(j.model_id) ?? j.model_id}</td>
                  <td>{j.method}</td>
                  <td>{j.dataset_id != null ? `upload ${j.dataset_id}` : j.dataset}</td>
                  <td>
                    <StatusBadge status={j.status} />
                  </td>
                  <td>
                    <ProgressBar
                      value={j.status === "succeeded" ? 1 : j.progress}
                      label={`Job ${j.id} progress`}
                    />
                    <small class="help">
                      {FINISHED.has(j.status) ? "" : (j.stage ?? "waiting for a worker")}
                    </small>
                  </td>
                  <td class="num">{percent(j.result?.top1)}</td>
                  <td>{date(j.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {jobs.data.total > jobs.data.items.length && (
            <p class="help">
              Showing the newest {jobs.data.items.length} of {jobs.data.total} jobs.
            </p>
          )}
        </div>
      )}
    </>
  );
}
