// SQL files are embedded as text: `import x from "../sql/0001_x.sql" with { type: "text" }`.
declare module "*.sql" {
  const text: string;
  export default text;
}

// The dashboard page and the chart library it loads are embedded as text too (src/status.ts).
declare module "*.html" {
  const text: string;
  export default text;
}
declare module "*.min.css" {
  const text: string;
  export default text;
}
declare module "uplot/dist/uPlot.iife.min.js" {
  const text: string;
  export default text;
}
