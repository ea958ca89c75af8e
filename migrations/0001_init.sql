-- The example app: a small project tracker (README's tour, `outpost dev`,
-- the tests). Migrations are numbered, applied in order, one transaction
-- each, and never edited once applied: change the schema with a new file.

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT ''
);

CREATE TABLE tasks (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    title      TEXT NOT NULL,
    done       INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1))
);

CREATE TABLE comments (
    id      TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    author  TEXT NOT NULL,
    body    TEXT NOT NULL
);

CREATE INDEX tasks_by_project ON tasks (project_id);
CREATE INDEX comments_by_task ON comments (task_id);
