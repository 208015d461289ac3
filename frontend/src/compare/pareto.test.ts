import { describe, expect, it } from "vitest";
import { paretoFront, type Point } from "./pareto";

/** The definition: p is on the front when no other point is at least as good on both counts
 * and better on one. */
function dominated(p: Point, points: Point[]): boolean {
  return points.some((q) => q.x <= p.x && q.y >= p.y && (q.x < p.x || q.y > p.y));
}

describe("paretoFront", () => {
  it("keeps exactly the points no other point dominates (random inputs)", () => {
    for (let trial = 0; trial < 200; trial++) {
      const n = 1 + Math.floor(Math.random() * 12);
      // Few distinct values, so ties in size and in accuracy happen often.
      const points = Array.from({ length: n }, () => ({
        x: Math.floor(Math.random() * 6),
        y: Math.floor(Math.random() * 6),
      }));
      const front = paretoFront(points);
      const expected = points.filter((p) => !dominated(p, points));
      const key = (p: Point) => `${p.x},${p.y}`;
      expect(new Set(front.map(key))).toEqual(new Set(expected.map(key)));
      expect(front.length).toBe(new Set(expected.map(key)).size); // one point per position
      for (let i = 1; i < front.length; i++) {
        expect(front[i].x).toBeGreaterThan(front[i - 1].x); // drawn left to right
        expect(front[i].y).toBeGreaterThan(front[i - 1].y);
      }
    }
  });

  it("is empty for no points", () => {
    expect(paretoFront([])).toEqual([]);
  });
});
