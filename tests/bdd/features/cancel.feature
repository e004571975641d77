Feature: Cancel
  Cancel is idempotent and frees the slot; a canceled task's stream ends with end, canceled.

  Scenario: Cancelling a queued task
    Given a server with one mock pool
    And task "blocker" holds the slot
    And task "waiting" waits in the queue
    When I cancel task "waiting"
    Then the answer is 204
    When I read the stream of task "waiting"
    Then the stream of task "waiting" ends canceled with no tokens
    And the queue of pool "p0" is empty

  Scenario: Cancelling a running task while reading it
    Given a server with one mock pool
    When I submit task "long" for 4000 tokens
    And I read task "long" until its first token, then cancel it and read on
    Then the stream of task "long" ends canceled with fewer than 4000 tokens
    And the slot of pool "p0" is free

  Scenario: A reader that disconnects cancels its task
    Given a server with one mock pool
    When I submit task "long" for 4000 tokens
    And I read task "long" until its first token, then hang up
    Then the slot of pool "p0" is free
    When I read the stream of task "long"
    Then the stream of task "long" ends canceled with fewer than 4000 tokens

  Scenario: Cancelling twice, or cancelling an unknown task
    Given a server with one mock pool
    When I submit task "short" for 2 tokens
    And I cancel task "short"
    And I cancel task "short"
    Then the answer is 204
    When I cancel a task nobody submitted
    Then the answer is 404 NOT_FOUND
