-- What a data plane says of itself and its traffic, for staged rollouts. `labels`: its
-- `--labels` as a JSON object; `traffic`: its latest report, cumulative per process, as a JSON
-- object of version -> [requests, errors_5xx]. NULL: a data plane (or a control plane) from
-- before reports.
ALTER TABLE data_planes ADD COLUMN labels TEXT;
ALTER TABLE data_planes ADD COLUMN traffic TEXT;
