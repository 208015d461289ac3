// The shell: who is signed in, the navigation, and which page the address shows.
import { useEffect, useState } from "preact/hooks";
import { api, setUnauthorizedHandler, type UserPublic } from "./api/client";
import { LoginPage } from "./auth/LoginPage";
import { ComparePage } from "./compare/ComparePage";
import { DatasetsPage } from "./datasets/DatasetsPage";
import { JobPage } from "./jobs/JobPage";
import { JobsPage } from "./jobs/JobsPage";
import { NewJobPage } from "./jobs/NewJobPage";
import { onLinkClick, useLocation } from "./lib/router";
import { ModelsPage } from "./models/ModelsPage";

const NAV = [
  ["/jobs", "Jobs"],
  ["/jobs/new", "New job"],
  ["/models", "Models"],
  ["/datasets", "Datasets"],
  ["/compare", "Compare"],
] as const;

function Page({ path, query }: { path: string; query: URLSearchParams }) {
  const job = path.match(/^\/jobs\/(\d+)$/);
  if (job) return <JobPage id={Number(job[1])} />;
  switch (path) {
    case "/":
    case "/jobs":
      return <JobsPage />;
    case "/jobs/new":
      return <NewJobPage query={query} />;
    case "/models":
      return <ModelsPage />;
    case "/datasets":
      return <DatasetsPage />;
    case "/compare":
      return <ComparePage query={query} />;
    default:
      return (
        <section class="card">
          <h1>Page not found</h1>
          <p>
            Nothing lives at <code>{path}</code>. <a href="/jobs">See the jobs</a>.
          </p>
        </section>
      );
  }
}

export function App() {
  const { path, query } = useLocation();
  const [user, setUser] = useState<UserPublic | null | undefined>(undefined);

  useEffect(() => {
    setUnauthorizedHandler(() => setUser(null));
    api.GET("/api/v1/auth/me").then(
      ({ data }) => setUser(data ?? null),
      () => setUser(null),
    );
  }, []);

  useEffect(() => {
    const here = NAV.find(([href]) => href === path)?.[1];
    document.title = `${here ?? "Quantization service"} · quantserve`;
  }, [path]);

  async function logout() {
    await api.POST("/api/v1/auth/logout");
    setUser(null);
  }

  if (user === undefined) return <p class="loading">Loading…</p>;
  if (user === null) return <LoginPage onLogin={setUser} />;
  return (
    <div onClick={onLinkClick}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/jobs">
          quantserve
        </a>
        <nav aria-label="Main">
          {NAV.map(([href, text]) => (
            <a href={href} aria-current={path === href ? "page" : undefined}>
              {text}
            </a>
          ))}
        </nav>
        <div class="who">
          <span>{user.name}</span>
          <button type="button" class="link" onClick={logout}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Page key={path} path={path} query={query} />
      </main>
    </div>
  );
}
