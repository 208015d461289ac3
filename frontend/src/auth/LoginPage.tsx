// Sign in with a user name and password; the API sets an HttpOnly session cookie.
import { useState } from "preact/hooks";
import { api, ApiFailure, failureFrom, type UserPublic } from "../api/client";
import { ErrorMessage } from "../components/ui";

export function LoginPage({ onLogin }: { onLogin: (user: UserPublic) => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const { data, error, response } = await api.POST("/api/v1/auth/login", {
        body: { username, password },
      });
      if (response.status === 401) {
        throw new ApiFailure(401, "unauthorized", "Wrong user name or password.");
      }
      if (!response.ok || !data) throw failureFrom(response.status, error);
      onLogin(data);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="login">
      <form class="card" onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">Sign in</h1>
        <div class="field">
          <label for="login-username">User name</label>
          <input
            id="login-username"
            name="username"
            autocomplete="username"
            required
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
          />
        </div>
        <div class="field">
          <label for="login-password">Password</label>
          <input
            id="login-password"
            name="password"
            type="password"
            autocomplete="current-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </div>
        <ErrorMessage error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="help">
          An administrator creates accounts with{" "}
          <code>python -m api users create NAME --password-stdin</code>.
        </p>
      </form>
    </main>
  );
}
