// parse-prometheus-text-format ships no types: its one function returns metric families.
declare module "parse-prometheus-text-format" {
  const parse: (text: string) => unknown[];
  export default parse;
}
