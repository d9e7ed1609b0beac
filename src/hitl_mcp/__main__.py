from hitl_mcp.cli import main

main()
