// Numbers for people.

export function bytes(n: number | null | undefined): string {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function percent(n: number | null | undefined, digits = 2): string {
  return n == null ? "—" : `${n.toFixed(digits)} %`;
}

export function count(n: number | null | undefined): string {
  return n == null ? "—" : n.toLocaleString("en-US");
}

export function date(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

export function seconds(s: number | null | undefined): string {
  if (s == null) return "—";
  return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

export function shortHash(sha: string): string {
  return sha.slice(0, 12);
}

/** "Memory: estimated X · measured peak Y" (either part alone when the other is unknown), or
 * null when neither is known. */
export function memoryText(
  estimate: number | null | undefined,
  peak: number | null | undefined,
): string | null {
  const parts = [
    estimate != null ? `estimated ${bytes(estimate)}` : "",
    peak != null ? `measured peak ${bytes(peak)}` : "",
  ].filter(Boolean);
  return parts.length ? `Memory: ${parts.join(" · ")}` : null;
}
