// Small shared pieces: error box, progress bar, status badge, data loading.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { ApiFailure } from "../api/client";

export function ErrorMessage({ error, id }: { error: unknown; id?: string }) {
  if (!error) return null;
  const text =
    error instanceof ApiFailure
      ? error.message
      : error instanceof Error
        ? error.message
        : String(error);
  return (
    <p class="error" role="alert" id={id}>
      {text}
    </p>
  );
}

export function ProgressBar({ value, label }: { value: number; label: string }) {
  const pct = Math.max(0, Math.min(1, value)) * 100;
  return (
    <div class="progress">
      <progress max={100} value={pct} aria-label={label}>
        {pct.toFixed(0)} %
      </progress>
      <span class="progress-text">{pct.toFixed(0)} %</span>
    </div>
  );
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status}`}>{status}</span>;
}

export function Section({ title, children }: { title: string; children: ComponentChildren }) {
  return (
    <section class="card">
      <h2>{title}</h2>
      {children}
    </section>
  );
}

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  reload: () => void;
}

/** Loads ``fetcher()`` on mount and whenever ``deps`` change; ``reload`` fetches again. */
export function useLoad<T>(fetcher: () => Promise<T>, deps: unknown[] = []): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>();
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    fetcher().then(
      (value) => live && (setData(value), setError(undefined)),
      (err) => live && setError(err),
    );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, reload };
}
