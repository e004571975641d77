Feature: Admission and streaming
  A client submits a task, is told where it stands in the queue, and reads its tokens as a
  server-sent event stream that always ends with exactly one terminal frame.

  Scenario: An admitted task streams started, its tokens, then end
    Given a server with one mock pool
    When I submit task "haiku" for 5 tokens
    Then task "haiku" is admitted at queue position 0 with a predicted start
    And the answer carries a correlation id
    When I read the stream of task "haiku"
    Then the stream of task "haiku" opens with started
    And the stream of task "haiku" carries 5 tokens numbered from 0
    And the stream of task "haiku" ends with end

  Scenario: Micro-batched frames carry the same text as one frame per token
    Given a server with one mock pool
    When I submit task "plain" for 12 tokens with seed 11
    And I submit task "batched" for 12 tokens with seed 11
    And I read the stream of task "plain"
    And I read the stream of task "batched" with micro-batching
    Then tasks "plain" and "batched" streamed the same text

  Scenario: A request that breaks the schema is refused with a typed error
    Given a server with one mock pool
    When I submit a task whose max_tokens is "many"
    Then the answer is 400 INVALID_PARAMS
