import { describe, expect, it } from "vitest";
import { type Draft, draftOf, FieldError, fieldsOf, paramsOf } from "./ParamsForm";

// The shapes pydantic gives the methods' params (see GET /api/v1/methods).
const schema = {
  type: "object",
  properties: {
    bits: { type: "integer", default: 4, minimum: 1, maximum: 8, title: "Bits" },
    lr: { type: "number", default: 0.001, exclusiveMinimum: 0, maximum: 1 },
    per_channel: { type: "boolean", default: true },
    w_bits: { type: "integer", enum: [1, 2, 3, 4, 32], default: 2 },
    schedule: { type: "string", enum: ["cosine", "step"], default: "step" },
    target: {
      anyOf: [{ type: "number", minimum: 0, maximum: 8 }, { type: "null" }],
      default: null,
    },
    milestones: { type: "array", items: { type: "integer", minimum: 1 }, default: [30, 45] },
  },
};

describe("the params form's values", () => {
  it("gives back the schema's defaults, typed, when nothing is edited", () => {
    expect(paramsOf(schema, draftOf(schema))).toEqual({
      bits: 4,
      lr: 0.001,
      per_channel: true,
      w_bits: 2,
      schedule: "step",
      target: null,
      milestones: [30, 45],
    });
  });

  it("types what the user typed, and an emptied nullable field is null", () => {
    const draft: Draft = {
      ...draftOf(schema, { target: 0.7 }),
      bits: "2",
      w_bits: "32",
      milestones: " 7, 9 ,",
      per_channel: false,
    };
    expect(draft.target).toBe("0.7");
    const params = paramsOf(schema, draft);
    expect(params).toMatchObject({ bits: 2, w_bits: 32, target: 0.7, milestones: [7, 9] });
    expect(params.per_channel).toBe(false);
    expect(paramsOf(schema, { ...draft, target: "" }).target).toBeNull();
  });

  it("names the field that does not hold a number", () => {
    for (const [field, text] of [
      ["bits", "2.5"],
      ["lr", "fast"],
      ["bits", ""],
      ["milestones", "3, x"],
    ]) {
      const draft = { ...draftOf(schema), [field]: text };
      expect(() => paramsOf(schema, draft)).toThrow(FieldError);
      try {
        paramsOf(schema, draft);
      } catch (err) {
        expect((err as FieldError).field).toBe(field);
      }
    }
  });

  it("finds each field's kind and whether it may be empty", () => {
    const kinds = Object.fromEntries(fieldsOf(schema).map((f) => [f.name, [f.kind, f.nullable]]));
    expect(kinds).toEqual({
      bits: ["integer", false],
      lr: ["number", false],
      per_channel: ["boolean", false],
      w_bits: ["enum", false],
      schedule: ["enum", false],
      target: ["number", true],
      milestones: ["list", false],
    });
  });
});
