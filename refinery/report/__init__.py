"""Review and report: failure patterns to accept or reject (`review`), the browser review (`web`), the report page
(`page`, `figures`, `plots`), project status, and two rounds compared before the judge (`compare`)."""
