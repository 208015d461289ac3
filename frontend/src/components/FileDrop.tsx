// A file input that also takes a dropped file; the input stays the labelled, focusable control.
import { useState } from "preact/hooks";

export function FileDrop({
  id,
  label,
  accept,
  file,
  onFile,
  describedBy,
  invalid,
}: {
  id: string;
  label: string;
  accept?: string;
  file: File | null;
  onFile: (file: File | null) => void;
  describedBy?: string;
  invalid?: boolean;
}) {
  const [over, setOver] = useState(false);
  return (
    <div
      class={`drop${over ? " drop-over" : ""}`}
      data-testid={`${id}-zone`}
      onDragOver={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        setOver(false);
        const dropped = e.dataTransfer?.files?.[0];
        if (dropped) onFile(dropped);
      }}
    >
      <label for={id}>{label}</label>
      <input
        id={id}
        type="file"
        accept={accept}
        aria-describedby={describedBy}
        aria-invalid={invalid || undefined}
        onChange={(e) => onFile(e.currentTarget.files?.[0] ?? null)}
      />
      <span class="help">
        {file ? `${file.name} (${file.size.toLocaleString()} bytes)` : "or drop a file here"}
      </span>
    </div>
  );
}
