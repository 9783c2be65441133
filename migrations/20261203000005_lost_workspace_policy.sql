-- What happens to a run whose workspace is lost while its agent works (its worker and engine
-- gone, no worker adopted it): started again from scratch (`retry`, while attempts remain) or
-- failed (`fail`), per project.
alter table projects add column agent_on_lost_workspace text not null default 'retry'
    check (agent_on_lost_workspace in ('retry', 'fail'));
