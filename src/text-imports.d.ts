// SQL files are embedded as text: `import x from "../sql/0001_x.sql" with { type: "text" }`.
declare module "*.sql" {
  const text: string;
  export default text;
}
