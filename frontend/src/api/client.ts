// The typed API client: openapi-fetch over the types generated from the server's OpenAPI schema
// (schema.d.ts, see scripts/schema.mjs). Every request carries X-Requested-With, which the API
// requires of cookie-authenticated writes.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type ModelPublic = Schemas["ModelPublic"];
export type DatasetPublic = Schemas["DatasetPublic"];
export type JobPublic = Schemas["JobPublic"];
export type JobCreate = Schemas["JobCreate"];
export type MethodPublic = Schemas["MethodPublic"];
export type ArchitecturePublic = Schemas["ArchitecturePublic"];
export type ResultPublic = Schemas["ResultPublic"];
export type ArtifactPublic = Schemas["ArtifactPublic"];
export type UserPublic = Schemas["UserPublic"];

export const REQUESTED_WITH = { "X-Requested-With": "quantserve" };

export const api = createClient<paths>({ baseUrl: "", headers: REQUESTED_WITH });

/** A field-level problem, as the API lists them in ``details.errors``. */
export interface FieldProblem {
  field: string;
  message: string;
}

/** A failed request, from the API's one error shape ``{"error": {code, message, details}}``. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }

  /** Problems per form field: validation errors, or a ``details.field`` naming one. */
  fieldProblems(): FieldProblem[] {
    const list = this.details["errors"];
    if (Array.isArray(list)) {
      return list.filter(
        (p): p is FieldProblem => typeof p?.field === "string" && typeof p?.message === "string",
      );
    }
    const field = this.details["field"];
    return typeof field === "string" ? [{ field, message: this.message }] : [];
  }
}

export function failureFrom(status: number, body: unknown): ApiFailure {
  const err = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } })?.error;
  if (err && typeof err.message === "string") {
    const details = typeof err.details === "object" && err.details ? err.details : {};
    return new ApiFailure(status, String(err.code ?? "error"), err.message, details as never);
  }
  return new ApiFailure(status, "http_error", `the server answered ${status}`);
}

let onUnauthorized: () => void = () => {};

/** Called when any request answers 401 (the session ended): the app shows the login page. */
export function setUnauthorizedHandler(handler: () => void): void {
  onUnauthorized = handler;
}

api.use({
  onResponse({ request, response }) {
    if (response.status === 401 && !request.url.includes("/api/v1/auth/")) onUnauthorized();
    return response;
  },
});

/** The data of an openapi-fetch call, or throws its ApiFailure. */
export async function call<T>(
  pending: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await pending;
  if (!response.ok) throw failureFrom(response.status, error);
  return data as T;
}

type UploadPath = "/api/v1/models" | "/api/v1/datasets";
type Created<P extends UploadPath> =
  paths[P]["post"]["responses"][201]["content"]["application/json"];

/** A multipart upload with progress (fetch cannot report upload progress; XHR can). */
export function upload<P extends UploadPath>(
  path: P,
  form: FormData,
  onProgress: (fraction: number) => void,
): Promise<Created<P>> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("X-Requested-With", REQUESTED_WITH["X-Requested-With"]);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 201) {
        onProgress(1);
        resolve(xhr.response as Created<P>);
      } else {
        if (xhr.status === 401) onUnauthorized();
        reject(failureFrom(xhr.status, xhr.response));
      }
    };
    xhr.onerror = () => reject(new ApiFailure(0, "network", "the upload did not reach the server"));
    xhr.send(form);
  });
}
