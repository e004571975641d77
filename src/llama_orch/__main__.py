from llama_orch.cli.main import main

main()
