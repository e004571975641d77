Feature: Placement overrides and priority dispatch
  Without overrides the freest GPU wins; pin, prefer, avoid and device masks move a task as
  asked, and refusals name the placement outcome.

  Background:
    Given a server with pools "p0" on GPU 0, "p1" on GPU 1 that never gets ready, and "p2" on GPU 1

  Scenario Outline: An override places the task
    When I submit a task placed with <placement>
    Then task "placed" is admitted to pool "<pool>"

    Examples:
      | placement                                                      | pool |
      | {"mode": "auto"}                                               | p0   |
      | {"mode": "pin", "pin_pool_id": "p2"}                           | p2   |
      | {"mode": "prefer", "prefer_pools": ["p2"]}                     | p2   |
      | {"mode": "prefer", "prefer_pools": ["p1"]}                     | p0   |
      | {"mode": "auto", "avoid_pools": ["p0"]}                        | p2   |
      | {"mode": "auto", "require_device_mask": [1]}                   | p2   |

  Scenario Outline: An override that cannot be met is refused
    When I submit a task placed with <placement>
    Then the answer is <status> <code>
    And the refusal mentions "<reason>"

    Examples:
      | placement                                                          | status | code             | reason                 |
      | {"mode": "pin", "pin_pool_id": "p1"}                               | 503    | POOL_UNREADY     | pinned_pool_infeasible |
      | {"mode": "prefer", "prefer_pools": ["p1"], "allow_fallback": false} | 503    | POOL_UNAVAILABLE | no_preferred_feasible  |
      | {"mode": "auto", "avoid_pools": ["zz"]}                            | 400    | INVALID_PARAMS   | zz                     |
