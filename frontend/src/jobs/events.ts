// The job's progress stream (Server-Sent Events): one "progress" event per stored job event
// (replayed from the start, so a finished job's training curve comes back too), then "end".
import { useEffect, useState } from "preact/hooks";

/** The JSON of one "progress" event (the stream is not described by the OpenAPI schema). */
export interface JobEvent {
  id: number;
  stage: string;
  fraction: number;
  metrics: Record<string, number>;
  created_at: string;
}

/** One finished epoch: the events whose metrics carry ``epoch``. */
export interface EpochPoint {
  stage: string;
  epoch: number;
  metrics: Record<string, number>;
}

export interface JobStream {
  latest: JobEvent | null;
  epochs: EpochPoint[];
  ended: boolean;
}

export function useJobEvents(jobId: number, onEnd: () => void): JobStream {
  const [state, setState] = useState<JobStream>({ latest: null, epochs: [], ended: false });
  useEffect(() => {
    setState({ latest: null, epochs: [], ended: false });
    const source = new EventSource(`/api/v1/jobs/${jobId}/events`);
    source.addEventListener("progress", (e) => {
      const event = JSON.parse((e as MessageEvent<string>).data) as JobEvent;
      setState((s) => ({
        ...s,
        latest: event,
        epochs:
          "epoch" in event.metrics
            ? [
                ...s.epochs,
                { stage: event.stage, epoch: event.metrics.epoch, metrics: event.metrics },
              ]
            : s.epochs,
      }));
    });
    source.addEventListener("end", () => {
      source.close();
      setState((s) => ({ ...s, ended: true }));
      onEnd();
    });
    return () => source.close();
  }, [jobId]);
  return state;
}
