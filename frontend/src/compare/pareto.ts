// The Pareto front of accuracy against size: the points no other point beats on both counts
// (smaller or equal size and higher or equal accuracy, one of them strictly).

export interface Point {
  x: number; // size, smaller is better
  y: number; // accuracy, larger is better
}

export function paretoFront<T extends Point>(points: T[]): T[] {
  const sorted = [...points].sort((a, b) => a.x - b.x || b.y - a.y);
  const front: T[] = [];
  for (const p of sorted) {
    if (front.length === 0 || p.y > front[front.length - 1].y) front.push(p);
  }
  return front;
}
