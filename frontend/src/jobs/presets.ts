// One-click settings from the papers, as data. A preset only sets the fields it names (the rest
// keep the server's defaults, which are the papers' own); one naming a field the method's schema
// lacks is not offered.

export interface Preset {
  method: string;
  label: string;
  params: Record<string, unknown>;
  note: string;
}

export const PRESETS: Preset[] = [
  {
    method: "lq_nets",
    label: "LQ-Nets W2A2",
    params: { w_bits: 2, a_bits: 2 },
    note: "2-bit weights and 2-bit activations (LQ-Nets, ECCV 2018).",
  },
  {
    method: "alq",
    label: "ALQ 0.7 bits",
    params: { target_bitwidth: 0.7 },
    note: "Prune bases until the average weight bitwidth is at most 0.7 (ALQ, CVPR 2020).",
  },
  {
    method: "l_dnq",
    label: "L-DNQ kbits 5",
    params: { kbits: 5 },
    note: "Five levels {0, ±α, ±2α} per layer, 3-bit codes (L-DNQ, AAAI 2019).",
  },
  {
    method: "qnets",
    label: "QNets 3-bit weights",
    params: { weight_levels: "pm4" },
    note: "Weights in {-4, -2, -1, 0, 1, 2, 4}·α, the paper's 3-bit (±4) set (CVPR 2019).",
  },
  {
    method: "uniform",
    label: "Uniform 2-bit",
    params: { bits: 2 },
    note: "Min-max rounding to 4 levels per output channel (baseline).",
  },
];

export function presetsFor(
  method: string,
  schema: Record<string, unknown>,
  server: Record<string, Record<string, unknown>> = {},
): Preset[] {
  const known = (schema["properties"] ?? {}) as Record<string, unknown>;
  const fromServer = Object.entries(server).map(([label, params]) => ({
    method,
    label,
    params,
    note: `The method's "${label}" preset (from the server): sets ${Object.keys(params).join(", ")}.`,
  }));
  return [...PRESETS, ...fromServer].filter(
    (p) => p.method === method && Object.keys(p.params).every((k) => k in known),
  );
}
