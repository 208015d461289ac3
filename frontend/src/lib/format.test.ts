import { describe, expect, it } from "vitest";
import { memoryText } from "./format";

describe("memoryText", () => {
  it("shows the estimate beside the measured peak", () => {
    expect(memoryText(3 * 2 ** 20, 2 * 2 ** 20)).toBe(
      "Memory: estimated 3.00 MiB · measured peak 2.00 MiB",
    );
  });

  it("shows whichever is known, and nothing when neither is", () => {
    expect(memoryText(null, 512)).toBe("Memory: measured peak 512 B");
    expect(memoryText(2048, undefined)).toBe("Memory: estimated 2.00 KiB");
    expect(memoryText(null, null)).toBeNull();
  });
});
