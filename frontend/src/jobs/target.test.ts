import { describe, expect, it } from "vitest";
import { FieldError, fieldsOf } from "../components/ParamsForm";
import {
  armDraft,
  buildTarget,
  defaultKnob,
  knobFields,
  orderChildren,
  paretoIds,
  parseBytes,
  parseLimit,
  parseValues,
  placeOf,
  placeProblems,
  dottedField,
  progressOf,
  searchOf,
  suggestedValues,
} from "./target";

// The shapes pydantic gives the methods' params (GET /api/v1/methods), trimmed.
const uniform = {
  properties: {
    bits: { type: "integer", default: 4, minimum: 1, maximum: 8 },
    per_channel: { type: "boolean", default: true },
  },
};
const lqNets = {
  properties: {
    w_bits: { type: "integer", enum: [1, 2, 3, 4, 32], default: 2 },
    epochs: { type: "integer", default: 64, minimum: 1, maximum: 1000 },
    lr: { type: "number", default: 0.1, exclusiveMinimum: 0, maximum: 10 },
    milestones: { type: "array", items: { type: "integer" }, default: [30] },
  },
};
const qnets = {
  properties: {
    weight_levels: { type: "string", enum: ["binary", "ternary", "pm2"], default: "ternary" },
    act_bits: { type: "integer", default: 0, minimum: 0, maximum: 4 },
  },
};
const alq = {
  properties: {
    i_max: { type: "integer", default: 6, minimum: 1, maximum: 8 },
    target_bitwidth: {
      anyOf: [{ type: "number", minimum: 0, maximum: 8 }, { type: "null" }],
      default: null,
    },
  },
};

const field = (schema: Record<string, unknown>, name: string) =>
  fieldsOf(schema).find((f) => f.name === name)!;

describe("which param a search varies", () => {
  it("offers whole numbers, numbers and choices, not flags or lists", () => {
    expect(knobFields(uniform).map((f) => f.name)).toEqual(["bits"]);
    expect(knobFields(lqNets).map((f) => f.name)).toEqual(["w_bits", "epochs", "lr"]);
  });

  it("starts from the bit width or level count", () => {
    expect(defaultKnob(uniform)).toBe("bits");
    expect(defaultKnob(lqNets)).toBe("w_bits");
    expect(defaultKnob(qnets)).toBe("weight_levels"); // a choice before a whole number
    expect(defaultKnob(alq)).toBe("target_bitwidth"); // a bit width, though a number
    expect(defaultKnob({ properties: { flag: { type: "boolean" } } })).toBeUndefined();
  });

  it("suggests every choice, a small range whole, else the default", () => {
    expect(suggestedValues(field(lqNets, "w_bits"))).toEqual([1, 2, 3, 4, 32]);
    expect(suggestedValues(field(uniform, "bits"))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(suggestedValues(field(qnets, "act_bits"))).toEqual([0, 1, 2, 3, 4]);
    expect(suggestedValues(field(lqNets, "epochs"))).toEqual([64]); // 1..1000: too many
    expect(suggestedValues(field(alq, "target_bitwidth"))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(suggestedValues(field(lqNets, "lr"))).toEqual([0.1]); // continuous
  });

  it("fills a method's row with its default knob and values", () => {
    expect(armDraft("uniform", uniform)).toEqual({
      method: "uniform",
      param: "bits",
      values: "1, 2, 3, 4, 5, 6, 7, 8",
    });
    expect(armDraft("qnets", qnets, "act_bits").values).toBe("0, 1, 2, 3, 4");
  });
});

describe("the values the user types", () => {
  it("reads a comma list, typed as the param is", () => {
    expect(parseValues(field(uniform, "bits"), " 2, 4 ,8,")).toEqual([2, 4, 8]);
    expect(parseValues(field(lqNets, "w_bits"), "1, 32")).toEqual([1, 32]);
    expect(parseValues(field(qnets, "weight_levels"), "binary, pm2")).toEqual(["binary", "pm2"]);
    expect(parseValues(field(alq, "target_bitwidth"), "0.5, 1.5")).toEqual([0.5, 1.5]);
  });

  it("says what is wrong", () => {
    const bits = field(uniform, "bits");
    expect(() => parseValues(bits, " , ")).toThrow("at least one value");
    expect(() => parseValues(bits, "2, x")).toThrow("x is not a number");
    expect(() => parseValues(bits, "2.5")).toThrow("not a whole number");
    expect(() => parseValues(bits, "2, 9")).toThrow("9 is out of range");
    expect(() => parseValues(bits, "0")).toThrow("out of range");
    expect(() => parseValues(bits, "2, 4, 2")).toThrow("2 is listed twice");
    expect(() => parseValues(field(lqNets, "w_bits"), "5")).toThrow("not one of 1, 2, 3, 4, 32");
    expect(() => parseValues(field(lqNets, "lr"), "0")).toThrow("out of range"); // exclusive
    const many = Array.from({ length: 33 }, (_, i) => i + 1).join(",");
    expect(() => parseValues(field(lqNets, "epochs"), many)).toThrow("at most 32");
  });
});

describe("sizes", () => {
  it("reads bytes with decimal and binary units", () => {
    expect(parseBytes("40000")).toBe(40000);
    expect(parseBytes("40 KB")).toBe(40_000);
    expect(parseBytes("40kib")).toBe(40_960);
    expect(parseBytes("0.5 MB")).toBe(500_000);
    expect(parseBytes("1.5 MiB")).toBe(1_572_864);
    expect(parseBytes(".5k")).toBe(500);
    expect(parseBytes("2 GB")).toBe(2e9);
    expect(parseBytes("12 bytes")).toBe(12);
  });

  it("refuses what is not a size", () => {
    expect(() => parseBytes("")).toThrow("enter a size");
    expect(() => parseBytes("-3 KB")).toThrow("enter a size");
    expect(() => parseBytes("1e3")).toThrow("enter a size");
    expect(() => parseBytes("5 XB")).toThrow("unknown unit XB");
    expect(() => parseBytes("0 MB")).toThrow("more than 0");
    expect(() => parseBytes("0.0001")).toThrow("more than 0"); // rounds to no byte
    expect(() => parseBytes("2000000 GB")).toThrow("too large");
  });

  it("reads the limit in the goal's unit", () => {
    expect(parseLimit("smallest_within", " 1.5 ")).toBe(1.5);
    expect(parseLimit("most_accurate_under", "1 KiB")).toBe(1024);
    expect(() => parseLimit("smallest_within", "0")).toThrow("more than 0");
    expect(() => parseLimit("smallest_within", "")).toThrow("enter a number");
    expect(() => parseLimit("smallest_within", "101")).toThrow("at most 100");
  });
});

describe("the request", () => {
  const own = { draft: armDraft("uniform", uniform), schema: uniform, params: { bits: 4 } };

  it("is one method's search: its params carry the first value of the knob", () => {
    const built = buildTarget({
      goal: "smallest_within",
      limit: "1",
      parallel: "2",
      arms: [
        { ...own, draft: { ...own.draft, values: "2, 4, 8" }, params: { per_channel: false } },
      ],
    });
    expect(built).toEqual({
      params: { per_channel: false, bits: 2 },
      target: { goal: "smallest_within", limit: 1, param: "bits", values: [2, 4, 8], parallel: 2 },
    });
    expect("other_methods" in built.target).toBe(false);
  });

  it("sends the other methods' rows as other_methods, and the budget in bytes", () => {
    const built = buildTarget({
      goal: "most_accurate_under",
      limit: "40 KB",
      parallel: "3",
      arms: [
        own,
        {
          draft: { method: "lq_nets", param: "w_bits", values: "1, 2" },
          schema: lqNets,
          params: { w_bits: 2, epochs: 3 },
        },
      ],
    });
    expect(built.target.limit).toBe(40_000);
    expect(built.target.other_methods).toEqual([
      { method: "lq_nets", param: "w_bits", values: [1, 2], params: { w_bits: 1, epochs: 3 } },
    ]);
  });

  it("names a problem's field as the server does", () => {
    const fieldOf = (input: Parameters<typeof buildTarget>[0]) => {
      try {
        buildTarget(input);
      } catch (err) {
        expect(err).toBeInstanceOf(FieldError);
        return [(err as FieldError).field, (err as FieldError).message];
      }
      throw new Error("no problem found");
    };
    const base = { goal: "smallest_within" as const, limit: "1", parallel: "2", arms: [own] };
    expect(fieldOf({ ...base, limit: "-1" })).toEqual([
      "target.limit",
      "the allowed drop must be more than 0 points",
    ]);
    expect(fieldOf({ ...base, goal: "most_accurate_under", limit: "lots" })[0]).toBe(
      "target.limit",
    );
    expect(fieldOf({ ...base, parallel: "0" })[0]).toBe("target.parallel");
    expect(fieldOf({ ...base, arms: [{ ...own, draft: { ...own.draft, values: "" } }] })).toEqual([
      "target.values",
      "enter at least one value",
    ]);
    const other = {
      draft: { method: "lq_nets", param: "w_bits", values: "7" },
      schema: lqNets,
      params: {},
    };
    expect(fieldOf({ ...base, arms: [own, other] })[0]).toBe("target.other_methods.0.values");
    const noKnob = { ...other, draft: { ...other.draft, param: "milestones" } };
    expect(fieldOf({ ...base, arms: [own, noKnob] })[0]).toBe("target.other_methods.0.param");
    expect(fieldOf({ ...base, arms: [own, own, own, own, own] })[0]).toBe("target.other_methods");
  });
});

describe("a search job's page", () => {
  const job = {
    id: 10,
    method: "uniform",
    target: {
      goal: "smallest_within",
      limit: 1,
      param: "bits",
      values: [2, 4, 8],
      parallel: 2,
      other_methods: [{ method: "lq_nets", param: "w_bits", values: [1, 2], params: {} }],
    },
  };
  const result = (top1: number, size: number) => ({ top1, quantized_bytes: size }) as never;
  const kids = [
    { id: 13, method: "uniform", params: { bits: 2 }, status: "succeeded", result: result(80, 1) },
    { id: 11, method: "uniform", params: { bits: 8 }, status: "succeeded", result: result(97, 4) },
    { id: 12, method: "uniform", params: { bits: 4 }, status: "succeeded", result: result(96, 2) },
    { id: 14, method: "lq_nets", params: { w_bits: 1 }, status: "running", result: null },
    {
      id: 15,
      method: "lq_nets",
      params: { w_bits: 2 },
      status: "succeeded",
      result: result(70, 3),
    },
  ];

  it("is no search without a target", () => {
    expect(searchOf({ method: "uniform", target: null })).toBeNull();
  });

  it("reads the spec, every searched method, and no outcome before the end", () => {
    const s = searchOf(job)!;
    expect(s.goal).toBe("smallest_within");
    expect(s.arms).toEqual([
      { method: "uniform", param: "bits", values: [2, 4, 8] },
      { method: "lq_nets", param: "w_bits", values: [1, 2] },
    ]);
    expect(s.outcome).toBeNull();
    expect(progressOf(s, kids as never)).toEqual({ run: 4, pending: 1, total: 5 });
    // Before the end, the front of what has finished: 13, 12, 11 (15 is bigger and worse).
    expect([...paretoIds(s, kids as never)].sort()).toEqual([11, 12, 13]);
  });

  it("places children by method and value, smallest model first", () => {
    const s = searchOf(job)!;
    expect(placeOf(s, kids[3])).toEqual({ arm: 1, index: 0 });
    expect(placeOf(s, { id: 20, method: "uniform", params: { bits: 5 } })).toEqual({
      arm: -1,
      index: -1,
    });
    expect(orderChildren(s, kids).map((k) => k.id)).toEqual([13, 12, 11, 14, 15]);
  });

  it("reads the outcome, with or without the per-method parts", () => {
    const ended = {
      ...job,
      target: {
        ...job.target,
        outcome: {
          winner_job_id: 12,
          winner_value: 4,
          pareto_job_ids: [13, 12],
          runs: 3,
          message: "found",
        },
      },
    };
    const s = searchOf(ended)!;
    expect(s.outcome).toMatchObject({ winner_job_id: 12, winner_method: null, runs: 3 });
    expect(s.outcome!.arms).toBeUndefined();
    expect([...paretoIds(s, kids as never)]).toEqual([13, 12]); // the server's, once ended
    const none = searchOf({
      ...job,
      target: {
        ...job.target,
        outcome: {
          winner_job_id: null,
          winner_value: null,
          pareto_job_ids: [],
          runs: 2,
          message: "no value meets the target",
        },
      },
    })!;
    expect(none.outcome).toMatchObject({
      winner_job_id: null,
      message: "no value meets the target",
    });
  });
});

describe("placing children by the server's record", () => {
  it("trusts target.children over the params (two arms may share a method)", () => {
    const s = searchOf({
      method: "uniform",
      target: {
        goal: "smallest_within",
        limit: 1,
        param: "bits",
        values: [2, 4],
        other_methods: [{ method: "uniform", param: "bits", values: [4, 8], params: {} }],
        children: { "7": [1, 0], "8": [0, 1] },
      },
    })!;
    const kid = (id: number) => ({ id, method: "uniform", params: { bits: 4 } });
    expect(placeOf(s, kid(7))).toEqual({ arm: 1, index: 0 });
    expect(placeOf(s, kid(8))).toEqual({ arm: 0, index: 1 });
    expect(orderChildren(s, [kid(7), kid(8)]).map((k) => k.id)).toEqual([8, 7]);
  });
});

describe("the server's problems with a search", () => {
  const arms = [
    { method: "uniform", param: "bits", values: "2, 4, 9" },
    { method: "lq_nets", param: "w_bits", values: "1, 5" },
  ];

  it("writes list positions as the form does", () => {
    expect(dottedField("target.other_methods[1].values[3]")).toBe(
      "target.other_methods.1.values.3",
    );
    expect(dottedField("target.limit")).toBe("target.limit");
  });

  it("puts a refused knob value beside that method's values", () => {
    const bits = { field: "bits", message: "Input should be less than or equal to 8" };
    // As the search's own check answers: the blamed field, and the method's own list.
    const named = { field: "target.values[2]", message: "target.values[2] (bits = 9): ..." };
    expect(placeProblems(arms, [bits], named)).toEqual({
      target: [
        { ...named, field: "target.values.2" },
        { ...bits, field: "target.values" },
      ],
    });
    // Without the blamed field (an older server): the first method's knob.
    expect(placeProblems(arms, [bits])).toEqual({ target: [{ ...bits, field: "target.values" }] });
    const wBits = { field: "w_bits", message: "Input should be 1, 2, 3, 4 or 32" };
    const other = { field: "target.other_methods[0].values[1]", message: "w_bits = 5" };
    expect(placeProblems(arms, [wBits], other).target).toContainEqual({
      field: "target.other_methods.0.values",
      message: wBits.message,
    });
  });

  it("puts a method's other params beside its form, and request errors beside the inputs", () => {
    const epochs = { field: "epochs", message: "too many" };
    const named = { field: "target.other_methods[0].params", message: "bad params" };
    expect(placeProblems(arms, [epochs], named)).toEqual({
      target: [{ field: "target.other_methods.0.params", message: "bad params" }],
      lq_nets: [epochs],
    });
    const limit = { field: "target.limit", message: "Input should be greater than 0" };
    expect(placeProblems(arms, [limit])).toEqual({ target: [limit] });
    // A problem named only by details.field comes back once, not twice.
    const param = { field: "target.param", message: "uniform has no param 'bitz'" };
    expect(placeProblems(arms, [param], param)).toEqual({ target: [param] });
  });
});
