import { defineConfig } from "vite";

// Built to dist/, which the API serves at / (api/frontend.py). During `npm run dev`, API calls
// go to the API on port 8000.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 600 },
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
});
