Feature: Priority dispatch
  Interactive tasks are dispatched ahead of batch ones by weight, and batch is never starved.

  Scenario: Interactive tasks go first, yet batch is not starved
    Given a server whose pool weighs interactive 2 to batch 1
    And task "blocker" holds the slot
    When I submit batch task "b" for 1 token
    And I submit tasks "i0", "i1", "i2", "i3" for 1 token each
    Then the queue positions of "b", "i0", "i1", "i2", "i3" are 0, 0, 1, 3, 4
    When I cancel task "blocker"
    Then tasks "b", "i0", "i1", "i2", "i3" all stream to end
